"""tools/probe_near_duplicates.py: nearest distances by family, and a near copy's changes."""

import numpy as np

from conftest import load_tool

tool = load_tool('probe_near_duplicates')


def test_cosine_nearest_matches_brute_force_by_family():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  family = np.array(['a', 'a', 'b', 'c', 'c', 'c', 'd'])
  same, other = tool.nearest(x, family, hamming=False, block=3, cosine=True)
  d = 1.0 - x @ x.T
  for i in range(7):
    kin = (family == family[i]) & (np.arange(7) != i)
    assert same[i] == (np.inf if not kin.any() else np.float32(d[i, kin].min()))
    assert other[i] == np.float32(d[i, family != family[i]].min())


def test_near_copy_changes_stay_within_the_worlds_sizes():
  rng = np.random.default_rng(0)
  image = rng.integers(20, 236, (16, 16, 3), dtype=np.uint8)
  for seed in range(5):
    changed = tool.near_copy_changes(image, np.random.default_rng(seed))
    assert list(changed) == ['moved 1-2 px', 'lit 4-10 grey levels', 'JPEG quality 70-85',
                             'all three']
    assert all(v.shape == image.shape and v.dtype == np.uint8 for v in changed.values())
    lift = changed['lit 4-10 grey levels'].astype(int) - image
    assert len(np.unique(lift)) == 1 and 4 <= abs(lift[0, 0, 0]) <= 10  # no clipping here
    moved = changed['moved 1-2 px']
    # Some move of 1-2 px each way puts the image's middle where it was moved to.
    assert any(np.array_equal(moved[4:12, 4:12], image[4 + dy:12 + dy, 4 + dx:12 + dx])
               for dy in (-2, -1, 1, 2) for dx in (-2, -1, 1, 2))
    assert not np.array_equal(changed['JPEG quality 70-85'], image)
