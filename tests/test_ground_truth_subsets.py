"""tools/ground_truth_subsets.py: the subsets a proxy must order, from a world's ground truth."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tads_jax.data import subset as subset_lib

from conftest import load_tool

tool = load_tool('ground_truth_subsets')


def test_masks_hand_case():
  noise = np.array(['clean', 'clean', 'misaligned', 'spam', 'clean'], dtype=object)
  on_task = np.array([True, False, True, True, True])
  masks = tool.ground_truth_masks(noise, on_task, fraction=0.4, seed=0)
  assert masks['clean_on_task'].tolist() == [True, False, False, False, True]
  assert masks['clean'].tolist() == [True, True, False, False, True]
  assert masks['full'].all()
  assert masks['misaligned'].tolist() == [False, False, True, False, False]
  assert masks['random'].sum() == 2  # round(0.4 x 5)
  again = tool.ground_truth_masks(noise, on_task, fraction=0.4, seed=0)['random']
  assert (again == masks['random']).all()  # the seed fixes it


def test_writes_one_subset_file_per_name(tmp_path):
  uids = [f'{i:032x}' for i in range(10)]
  world = tmp_path / 'w' / 'ingest' / 'world'
  world.mkdir(parents=True)
  pq.write_table(pa.table({'uid': uids, 'noise': ['clean'] * 6 + ['misaligned'] * 4,
                           'on_task': [True, False] * 5}),
                 str(world / 'ground_truth.parquet'))
  picked = tmp_path / 'baselines' / 'some_selector' / 'subset.npy'
  picked.parent.mkdir(parents=True)
  subset_lib.write_subset(str(picked), [uids[i] for i in (0, 6, 7)])
  tool.main(['--workdir', str(tmp_path / 'w'), '--out', str(tmp_path / 'out'),
             '--fraction', '0.5', '--clean', str(picked)])
  def read(name):
    return sorted(subset_lib.array_to_uids(subset_lib.read_subset(
        str(tmp_path / 'out' / f'{name}.npy'))))
  assert read('clean_on_task') == [uids[i] for i in (0, 2, 4)]
  assert read('clean') == uids[:6]
  assert read('full') == uids
  assert read('misaligned') == uids[6:]
  random = read('random')
  assert len(random) == 5 and set(random) <= set(uids)
  filled = read('clean_on_task_filled_off_task')  # 3 clean on-task + 2 of rows 1, 3, 5
  assert len(filled) == 5 and set(filled) - {uids[i] for i in (0, 2, 4)} <= {
      uids[i] for i in (1, 3, 5)}
  assert not (tmp_path / 'out' / 'clean_on_task_filled_copies.npy').exists()  # no copies
  # Row 0 stays; the misaligned rows 6 and 7 give way to rows 2 and 4.
  assert read('some_selector_cleaned') == [uids[i] for i in (0, 2, 4)]


NOISE = np.array(['clean', 'clean', 'clean', 'clean', 'misaligned', 'exact_dup', 'near_dup',
                  'spam', 'clean', 'exact_dup'], dtype=object)
ON_TASK = np.array([True, True, False, False, True, True, True, True, True, False])


def test_filled_subsets_are_the_clean_on_task_set_topped_up_with_one_kind():
  # clean on-task: rows 0, 1, 8; clean off-task: 2, 3; on-task copies: 5, 6.
  masks, missing = tool.filled_masks(NOISE, ON_TASK, fraction=0.5, seed=0)  # budget 5
  assert missing == []
  off, copies = masks['clean_on_task_filled_off_task'], masks['clean_on_task_filled_copies']
  assert np.flatnonzero(off).tolist() == [0, 1, 2, 3, 8]
  assert np.flatnonzero(copies).tolist() == [0, 1, 5, 6, 8]
  partial = tool.filled_masks(NOISE, ON_TASK, 0.4, seed=3)[0]['clean_on_task_filled_copies']
  assert partial.sum() == 4 and partial[[0, 1, 8]].all() and partial[[5, 6]].sum() == 1
  assert tool.filled_masks(NOISE, ON_TASK, fraction=0.2, seed=0) == (
      {}, ['the 3 clean on-task samples exceed the budget 2'])
  masks, missing = tool.filled_masks(NOISE, ON_TASK, fraction=0.7, seed=0)  # 4 places
  assert list(masks) == [] and missing == [
      'clean_on_task_filled_off_task: 2 samples to fill 4 places with',
      'clean_on_task_filled_copies: 2 samples to fill 4 places with']


def test_cleaning_swaps_noisy_and_off_task_members_for_unchosen_clean_on_task_ones():
  chosen = np.zeros(10, bool)
  chosen[[0, 2, 4, 5, 7]] = True  # clean on-task, clean off-task, misaligned, copy, spam
  # 2, 4 and 7 must go, and only rows 1 and 8 are clean on-task outside the subset.
  with pytest.raises(ValueError, match='3 members to swap, 2 clean on-task'):
    tool.cleaned_mask(chosen, NOISE, ON_TASK, seed=0)
  chosen[7] = False
  mask = tool.cleaned_mask(chosen, NOISE, ON_TASK, seed=0)
  assert np.flatnonzero(mask).tolist() == [0, 1, 5, 8]  # 0 and 5 stay, 1 and 8 come in
