"""tools/ground_truth_subsets.py: the subsets a proxy must order, from a world's ground truth."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
  tool.main(['--workdir', str(tmp_path / 'w'), '--out', str(tmp_path / 'out'),
             '--fraction', '0.5'])
  def read(name):
    return sorted(subset_lib.array_to_uids(subset_lib.read_subset(
        str(tmp_path / 'out' / f'{name}.npy'))))
  assert read('clean_on_task') == [uids[i] for i in (0, 2, 4)]
  assert read('clean') == uids[:6]
  assert read('full') == uids
  assert read('misaligned') == uids[6:]
  random = read('random')
  assert len(random) == 5 and set(random) <= set(uids)
