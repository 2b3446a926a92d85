"""The device check (docs/device_check.py, `bash benchmark.sh gpu`): its host-read counter, the check
itself on the CPU, and, where CUDA exists, on the GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "docs" / "device_check.py"
sys.path.insert(0, str(ROOT))
from docs.device_check import HostReads  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


def test_host_reads_counts_scalar_reads_and_nothing_else():
    x = torch.randn(8)
    with HostReads("cpu") as mode:
        y = (x * 2).softmax(0).cumsum(0)  # device work only
        assert mode.count == 0
        y.sum().item()
        bool(y.any())
        float(y[0])
    assert mode.count == 3 and mode.simulator == 0


def test_device_check_on_the_cpu(tmp_path):
    """The check end to end where no GPU is: each run repeats exactly, and the rollout reads the
    host twice a step (the env's and the script's "did an episode end?"), in a MAPPO, a CORA
    (whose QP and Monte-Carlo times are reported) and the ILVF script."""
    out = subprocess.run([sys.executable, str(CHECK), "--device", "cpu",
                          "--only", "^(mappo|cora_mappo|happo_continuous).py (matrix|diff)|ilvf_ppo.py coupled"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [r[:2] for r in rows] == [["mappo.py", "matrix:team"], ["cora_mappo.py", "matrix:team"],
                                     ["happo_continuous.py", "diff:2agents"], ["ilvf_ppo.py", "coupled:ring-8"]]
    for row in rows:
        # CORA's QP stops when it converges, so its reads differ a little between the two counted runs
        assert row[2] == "yes" and 2.0 <= float(row[6]) < 2.5 and float(row[7]) == 0.0, row
    assert len(rows[1]) > 8 and all(float(v) > 0 for v in (rows[1][8], rows[1][10])), "CORA's MC / QP times"


def test_device_check_skips_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the check runs instead of skipping")
    out = subprocess.run(["bash", str(ROOT / "benchmark.sh"), "gpu"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("device check skipped: no CUDA device"), out.stdout


def test_device_check_rejects_an_empty_selection(tmp_path):
    out = subprocess.run([sys.executable, str(CHECK), "--device", "cpu", "--only", "no-such-script"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no case matches --only 'no-such-script'"
    out = subprocess.run([sys.executable, str(CHECK), "--device", "cpu", "--only", "mappo(("],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: --only 'mappo((' is not a regular expression")
    assert "Traceback" not in out.stderr


@needs_cuda
def test_device_check_on_cuda(tmp_path):
    """Every script with --cuda on every family written in torch: runs, repeats exactly, and
    reads the host no more per rollout step than on the CPU."""
    out = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, cwd=tmp_path, timeout=3000)
    assert out.returncode == 0, out.stdout + out.stderr
    for row in (line.split() for line in out.stdout.splitlines()[2:]):
        assert row[2] == "yes" and float(row[6]) < 2.5, row
