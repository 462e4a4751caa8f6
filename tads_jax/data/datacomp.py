"""DataComp metadata: `*.parquet` (uid, text, scores, ...) with a same-named `*.npz` of CLIP
embeddings (b32_img, b32_txt, l14_img, l14_txt; float16; rows aligned with the parquet),
and optionally the same-named `*.tar` of the images (webdataset, `.json` carrying the uid):
DataComp's full layout, where the tars supply pixels and bytes and the npz the embeddings.

Embeddings are L2-normalized on load, in float32, because every consumer (clip score,
relevance, k-means) wants cosines. A row whose embedding is NaN/inf or zero cannot be
normalized; it is flagged in `valid` (and zeroed) rather than raised, since one bad row in a
pool of millions is a skip, not a reason to stop.
"""

import dataclasses
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax.data import webdataset

# The model whose embeddings each npz key pair holds (DataComp's README): a task embedded
# with another model would not be in the pool's space.
HF_CHECKPOINTS = {'b32': 'openai/clip-vit-base-patch32', 'l14': 'openai/clip-vit-large-patch14'}
COLUMNS = ('uid', 'url', 'text', 'original_width', 'original_height',
           'clip_b32_similarity_score', 'clip_l14_similarity_score', 'sha256')
MODELS = ('b32', 'l14')


@dataclasses.dataclass
class MetadataShard:
  path: str
  table: pa.Table
  uids: list[str]             # lower-case 32-hex, row order
  image_emb: np.ndarray       # float32 [N, D], unit norm where valid, 0 elsewhere
  text_emb: np.ndarray        # float32 [N, D]
  valid: np.ndarray           # bool [N]: both embeddings finite and non-zero


def npz_path(parquet_path: str) -> str:
  return parquet_path[:-len('.parquet')] + '.npz'


def tar_path(parquet_path: str) -> str:
  """The images of a metadata file: the same-named tar beside it (it may not exist)."""
  return parquet_path[:-len('.parquet')] + '.tar'


def image_tars(paths: list) -> list | None:
  """The tars of the metadata files `paths`, or None when none has one; ValueError naming
  the first missing tar when only some do (a pool is scored with or without images, not
  half of each)."""
  tars = [tar_path(p) for p in paths]
  present = [os.path.isfile(t) for t in tars]
  if not any(present):
    return None
  if not all(present):
    missing = tars[present.index(False)]
    raise ValueError(f'{missing}: missing, while {sum(present)} of the {len(tars)} metadata '
                     'files have their tar beside them; give every metadata file its tar '
                     '(same name, .tar) or none')
  return tars


def npz_dims(parquet_path: str, model: str = 'b32') -> dict:
  """{key: shape} of the `model` keys in the npz beside `parquet_path`, read from the .npy
  headers inside the zip without loading the arrays (a pool's npz files are gigabytes)."""
  path = npz_path(parquet_path)
  out = {}
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      for side in ('img', 'txt'):
        key = f'{model}_{side}'
        if f'{key}.npy' not in names:
          keys = [n[:-len('.npy')] for n in names if n.endswith('.npy')]
          raise ValueError(f'{path}: no key {key!r} for model {model!r} (keys: {keys})')
        with archive.open(f'{key}.npy') as f:
          version = np.lib.format.read_magic(f)
          if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
          else:
            shape, _, _ = np.lib.format.read_array_header_2_0(f)
        out[key] = tuple(shape)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: cannot read embeddings ({e})') from e
  return out


def checkpoint_dim(folder: str) -> int:
  """The embedding dimension of a Hugging Face CLIP folder: config.json's projection_dim
  (512, transformers' default, when absent)."""
  path = os.path.join(folder, 'config.json')
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read the checkpoint config ({e})') from e
  dim = config.get('projection_dim', 512) if isinstance(config, dict) else None
  if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
    raise ValueError(f'{path}: field projection_dim: expected a positive integer, got {dim!r}')
  return dim


def list_metadata(spec) -> list[str]:
  """Parquet files matched by `spec` (braces/globs), each checked to have its npz beside."""
  paths = webdataset.expand_shards(spec)
  for path in paths:
    if not path.endswith('.parquet'):
      raise ValueError(f'{path}: DataComp metadata must be a .parquet file')
    if not os.path.isfile(npz_path(path)):
      raise ValueError(f'{npz_path(path)}: missing embeddings file for {path}')
  return paths


def _normalize(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  emb = emb.astype(np.float32)  # [N, D]
  with np.errstate(over='ignore', invalid='ignore'):
    norm = np.linalg.norm(emb, axis=1, keepdims=True)  # [N, 1]
  ok = np.isfinite(emb).all(axis=1) & np.isfinite(norm[:, 0]) & (norm[:, 0] > 0)
  emb = np.where(ok[:, None], emb / np.where(ok[:, None], norm, 1.0), 0.0)
  return emb.astype(np.float32), ok


def read_metadata(parquet_path: str, model: str = 'b32', columns=None) -> MetadataShard:
  """Reads one metadata parquet and its npz; `columns` limits the parquet columns read."""
  if columns is not None:
    columns = list(dict.fromkeys(['uid', *columns]))
  try:
    table = pq.read_table(parquet_path, columns=columns)
  except (OSError, pa.ArrowException) as e:
    raise ValueError(f'{parquet_path}: cannot read parquet ({e})') from e
  if 'uid' not in table.column_names:
    raise ValueError(f'{parquet_path}: no "uid" column (columns: {table.column_names})')
  uid_col = table.column('uid')
  if not (pa.types.is_string(uid_col.type) or pa.types.is_large_string(uid_col.type)):
    raise ValueError(f'{parquet_path}: column "uid" must hold strings, got {uid_col.type}')
  ok = pc.fill_null(pc.match_substring_regex(uid_col, r'^[0-9a-fA-F]{32}$'), False)
  if len(uid_col) and not pc.all(ok).as_py():
    row = int(pc.index(ok, False).as_py())
    raise ValueError(f'{parquet_path}: row {row} field "uid": {uid_col[row].as_py()!r} is '
                     'not a 32-character hex uid')
  uids = pc.utf8_lower(uid_col).to_pylist()

  path = npz_path(parquet_path)
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read embeddings ({e})') from e
  with npz:
    embs = {}
    for side in ('img', 'txt'):
      key = f'{model}_{side}'
      if key not in npz.files:
        raise ValueError(f'{path}: no key {key!r} for model {model!r} (keys: {npz.files})')
      emb = npz[key]
      if emb.ndim != 2 or emb.shape[0] != table.num_rows:
        raise ValueError(f'{path}: key {key!r} has shape {emb.shape}, expected '
                         f'[{table.num_rows}, D] to match the rows of {parquet_path}')
      if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f'{path}: key {key!r} has dtype {emb.dtype}, expected float')
      embs[side] = emb
  if embs['img'].shape[1] != embs['txt'].shape[1]:
    raise ValueError(f'{path}: {model}_img dim {embs["img"].shape[1]} != {model}_txt dim '
                     f'{embs["txt"].shape[1]}')
  image_emb, image_ok = _normalize(embs['img'])
  text_emb, text_ok = _normalize(embs['txt'])
  valid = image_ok & text_ok  # a pair is usable only if both sides are
  image_emb[~valid] = 0.0
  text_emb[~valid] = 0.0
  return MetadataShard(path=parquet_path, table=table, uids=uids, image_emb=image_emb,
                       text_emb=text_emb, valid=valid)


def write_metadata(parquet_path: str, table_dict: dict, embeddings: dict,
                   dtype=np.float16) -> None:
  """Writes a parquet and its npz (embeddings cast to `dtype`, float16 as DataComp ships).

  Both files go to temporary names first and are renamed, the npz last, so list_metadata
  never sees a parquet whose npz is half-written.
  """
  if not parquet_path.endswith('.parquet'):
    raise ValueError(f'{parquet_path}: metadata path must end with .parquet')
  table = pa.table(table_dict)
  arrays = {}
  for key, value in embeddings.items():
    value = np.asarray(value)
    if value.ndim != 2 or value.shape[0] != table.num_rows:
      raise ValueError(f'{parquet_path}: embedding {key!r} has shape {value.shape}, '
                       f'expected [{table.num_rows}, D]')
    arrays[key] = value.astype(dtype)
  with pipeline.atomic_write(parquet_path) as tmp:
    pq.write_table(table, tmp)
  with pipeline.atomic_write(npz_path(parquet_path)) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)
