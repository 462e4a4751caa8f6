"""Selectors: one interface (fit on the pool's features, then score every sample).

A selector is a class registered by name; `config.selector.name` picks it. Higher scores
mean more worth training on; the selection stage turns scores into a subset.
"""

import abc
from typing import Callable

import ml_collections
import pyarrow as pa
import numpy as np

SELECTORS: dict[str, Callable] = {}


def register(name: str):
  def wrap(cls):
    if name in SELECTORS:
      raise ValueError(f'selector {name!r} registered twice')
    cls.name = name
    SELECTORS[name] = cls
    return cls
  return wrap


class Selector(abc.ABC):
  """Base interface: `fit` learns what the selector needs, `score` rates every sample."""
  name = ''
  learns = False  # True: the learn stage fits it (`learn`) before select scores with it

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def fit(self, features: pa.Table) -> dict:
    """Learns from the pool's features; returns a JSON-able summary for the report."""
    return {}

  @abc.abstractmethod
  def score(self, features: pa.Table) -> np.ndarray:  # [N] float64
    """One score per row of `features`; higher is better."""


def get(name: str, config: ml_collections.ConfigDict) -> Selector:
  return SELECTORS[name](config)


# Importing the modules registers the selectors.
from tads_jax.selectors import clip_score, random_selector, tads  # pylint: disable=g-import-not-at-top,unused-import
