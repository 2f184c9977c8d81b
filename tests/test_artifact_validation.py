"""Bad HDF5 inputs: one line naming the file and dataset, exit 2, no output written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from stages.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    (d / "params.yaml").write_text(yaml.safe_dump(small_params()))
    result = runner.invoke(app, ["init", "--params", str(d / "params.yaml"), "--controllers-out", str(d / "c.h5"),
                                 "--policy-out", str(d / "p.h5"), "--step-out", str(d / "s.h5")])
    assert result.exit_code == 0, result.output
    return d


def corrupt(src, dst, how):
    with h5py.File(src) as f_in, h5py.File(dst, "w") as f_out:
        for key, value in f_in.attrs.items():
            f_out.attrs[key] = value
        for name in f_in:
            f_out.create_dataset(name, data=f_in[name][()])
        how(f_out)


def rewrite(src, dst, changes):
    """Copy an artifact (groups included), replacing datasets by fn(old value)."""
    with h5py.File(src) as f_in, h5py.File(dst, "w") as f_out:
        for key, value in f_in.attrs.items():
            f_out.attrs[key] = value
        for name in f_in:
            f_in.copy(name, f_out)
        for name, fn in changes.items():
            value = fn(f_out[name][()])
            del f_out[name]
            f_out.create_dataset(name, data=value)


def set_dataset(name, fn):
    def how(f):
        value = fn(f[name][()])
        del f[name]
        f.create_dataset(name, data=value)
    return how


def nan_first(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


def asymmetric(a):
    a = a.copy()
    a[0, 0, 0, 1] += 0.5
    return a


def indefinite(a):
    a = a.copy()
    a[0, 3] = -np.eye(a.shape[-1])
    return a


CASES = [
    ("missing", None, ["file not found"]),
    ("not_hdf5", None, ["not an HDF5 file"]),
    ("schema", lambda f: f.attrs.__setitem__("schema_version", 99), ["schema_version is 99", "expected 1"]),
    ("no_K", lambda f: f.__delitem__("K"), ["dataset 'K' is missing"]),
    ("nan_k", set_dataset("k", nan_first), ["dataset 'k' contains NaN or Inf"]),
    ("shape", set_dataset("k", lambda a: a[:, :-1]), ["do not have the shapes"]),
    ("asym", set_dataset("pol_covar", asymmetric), ["'pol_covar' is not symmetric"]),
    ("indef", set_dataset("pol_covar", indefinite), ["'pol_covar' is not positive definite"]),
]


@pytest.mark.parametrize("name,how,words", CASES, ids=[c[0] for c in CASES])
def test_bad_controllers_file(init_dir, tmp_path, name, how, words):
    bad = tmp_path / f"{name}.h5"
    if name == "not_hdf5":
        bad.write_text("this is not HDF5")
    elif how is not None:
        corrupt(init_dir / "c.h5", bad, how)
    out = tmp_path / "samples.h5"
    result = runner.invoke(app, ["sample", "-i", "0", "--params", str(init_dir / "params.yaml"),
                                 "--controllers", str(bad), "--policy", str(init_dir / "p.h5"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and str(bad) in message
    for word in words:
        assert word in message, message
    assert not out.exists()
    assert not list(tmp_path.glob(".samples.h5*")), "a temporary file was left behind"


def test_c_step_rejects_files_of_different_problems(init_dir, tmp_path):
    """Dynamics fitted for another horizon: one line naming the file, no traceback, no output."""
    p = ["--params", str(init_dir / "params.yaml")]
    d = tmp_path

    def gps(*args):
        result = runner.invoke(app, [*map(str, args), *p])
        return result

    assert gps("sample", "-i", "0", "--controllers", init_dir / "c.h5", "--policy", init_dir / "p.h5", "--out", d / "x.h5").exit_code == 0
    assert gps("fit-dynamics", "-i", "0", "--samples", d / "x.h5", "--out", d / "dyn.h5").exit_code == 0
    assert gps("fit-policy", "-i", "0", "--samples", d / "x.h5", "--policy", init_dir / "p.h5", "--out", d / "lin.h5").exit_code == 0
    rewrite(d / "dyn.h5", d / "short.h5", {n: (lambda a: a[:, :-1]) for n in ("Fm", "fv", "dyn_covar")})
    result = gps("c-step", "-i", "0", "--samples", d / "x.h5", "--dynamics", d / "short.h5", "--policy-lin", d / "lin.h5",
                 "--step", init_dir / "s.h5", "--prev-controllers", init_dir / "c.h5", "--out", d / "new.h5")
    message = result.output.strip()
    assert result.exit_code == 2 and "\n" not in message, message
    assert "short.h5" in message and "do not match" in message
    assert not (d / "new.h5").exists()
    rewrite(d / "dyn.h5", d / "ragged.h5", {"fv": lambda a: a[:, :, :-1]})
    result = gps("c-step", "-i", "0", "--samples", d / "x.h5", "--dynamics", d / "ragged.h5", "--policy-lin", d / "lin.h5",
                 "--step", init_dir / "s.h5", "--prev-controllers", init_dir / "c.h5", "--out", d / "new.h5")
    assert result.exit_code == 2 and "dataset 'fv' has shape" in result.output and "ragged.h5" in result.output
