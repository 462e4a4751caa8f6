"""notebooks/quickstart.ipynb: well formed and stored without outputs (fast); executed top to
bottom in a Jupyter kernel with nbclient, its outputs checked against the run's files (slow).
"""

import ast
import json
import os

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')


def _read():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def test_notebook_is_valid_clean_python():
  nb = _read()
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code
  for cell in code:
    assert not cell.outputs and cell.execution_count is None  # stored clean
    ast.parse(cell.source)  # plain Python (no magics): runs in any kernel
  assert nb.metadata.kernelspec.name == 'python3'


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'work')
  monkeypatch.setenv('TADS_WORKDIR', workdir)  # the kernel inherits the environment
  nb = _read()
  client = nbclient.NotebookClient(
      nb, timeout=1500, kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  html = '\n'.join(o.data['text/html'] for o in outputs
                   if o.output_type in ('display_data', 'execute_result')
                   and 'text/html' in o.data)
  with open(os.path.join(workdir, 'report.json')) as f:
    report = json.load(f)
  # Every stage ran; the comparison holds TADS and the three baselines.
  assert set(report['stages']) == {'ingest', 'encoder', 'embed', 'features', 'learn',
                                   'select', 'evaluate'}
  assert sorted(report['evaluation']['baselines']) == ['clip_score', 'full', 'random']
  for name in ('tads (selected)', 'full', 'random', 'clip_score'):
    assert f'<td>{name}</td>' in html, name
  # The gallery rendered inline with images, one group per ground-truth noise type.
  assert html.count('data:image/jpeg;base64,') == html.count('class="tg-card')
  assert html.count('class="tg-card') > 0
  for row in report['ground_truth']['by_noise']:
    assert f'{row["noise"]}: kept {row["kept"]} of' in html, row
  assert any(o.get('data', {}).get('image/png') for o in outputs)  # the comparison plot
  assert os.path.exists(os.path.join(workdir, 'report.html'))
