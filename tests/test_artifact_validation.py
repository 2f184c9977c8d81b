"""Bad HDF5 inputs: one line naming the file and dataset, exit 2, no output written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from stages.main import registered_app

app = registered_app()

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
    assert message == (f"gps c-step: error: {d / 'short.h5'}: dataset 'Fm' has shape (2, 29, 10, 12), "
                       f"expected [M,T,dX,D] with T = 30 (as in {d / 'x.h5'})"), message
    assert not (d / "new.h5").exists()
    rewrite(d / "dyn.h5", d / "ragged.h5", {"fv": lambda a: a[:, :, :-1]})
    result = gps("c-step", "-i", "0", "--samples", d / "x.h5", "--dynamics", d / "ragged.h5", "--policy-lin", d / "lin.h5",
                 "--step", init_dir / "s.h5", "--prev-controllers", init_dir / "c.h5", "--out", d / "new.h5")
    assert result.exit_code == 2 and "dataset 'fv' has shape" in result.output and "ragged.h5" in result.output


# ------------------------------------------------------------------ samples, policy, step and the other inputs
#
# Each case: which input is bad (the file it is made from and the command that reads it), how it is
# spoiled, and words the one-line message must contain. The command must exit 2 with one line naming
# the bad file, print no traceback, and write no output (not even a temporary file).


def copy_and(how):
    """Copy an artifact (groups and attributes included), then apply how(f) to the copy."""
    def make(src, dst):
        with h5py.File(src) as f_in, h5py.File(dst, "w") as f_out:
            for key, value in f_in.attrs.items():
                f_out.attrs[key] = value
            for name in f_in:
                f_in.copy(name, f_out)
            how(f_out)
    return make


def set_attr(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


def del_attr(name):
    return lambda f: f.attrs.__delitem__(name)


def delete(name):
    return lambda f: f.__delitem__(name)


def add(name, value):
    return lambda f: f.create_dataset(name, data=value)


def first(value):
    def fn(a):
        a = a.copy()
        a.flat[0] = value
        return a
    return fn


def as_int(a):
    return np.round(a).astype(np.int64)


def as_string(a):
    return np.array(["x"] * a.size, dtype="S8").reshape(a.shape)


def asym_last2(a):
    a = a.copy()
    a[(0,) * (a.ndim - 2) + (0, 1)] += 0.5
    return a


def not_pd_last2(a):
    a = a.copy()
    idx = (0,) * (a.ndim - 2)
    a[idx] = -np.eye(a.shape[-1])
    return a


def both(*hows):
    def how(f):
        for h in hows:
            h(f)
    return how


# input kind -> (file in run0 it is made from, option of the reading command that gets the bad file)
SOURCES = {
    "samples": "x.h5", "policy": "pol.h5", "step": "s.h5", "dynamics": "dyn.h5", "dyn_prior": "dyn.h5",
    "lin_prior": "lin.h5", "prev_controllers": "new.h5", "controllers": "new.h5", "adjust_prev_step": "s.h5",
    "policy_lin": "lin.h5",
}

BAD_INPUTS = [
    # samples.h5, read by fit-dynamics (which checks the whole file, not only X and U)
    ("samples", "missing", None, ["file not found"]),
    ("samples", "not_hdf5", None, ["not an HDF5 file"]),
    ("samples", "schema", set_attr("schema_version", 2), ["schema_version is 2, expected 1"]),
    ("samples", "no_X", delete("X"), ["dataset 'X' is missing"]),
    ("samples", "no_Cm", delete("Cm"), ["dataset 'Cm' is missing"]),
    ("samples", "int_X", set_dataset("X", as_int), ["dataset 'X' has dtype int64, expected float64"]),
    ("samples", "str_cost", set_dataset("cost", as_string), ["dataset 'cost' has dtype string, expected float64"]),
    ("samples", "f32_U", set_dataset("U", lambda a: a.astype(np.float32)), ["dataset 'U' has dtype float32, expected float64"]),
    ("samples", "nan_X", set_dataset("X", nan_first), ["dataset 'X' contains NaN or Inf"]),
    ("samples", "inf_cc", set_dataset("cc", first(np.inf)), ["dataset 'cc' contains NaN or Inf"]),
    ("samples", "short_U", set_dataset("U", lambda a: a[:, :, :-1]),
     ["dataset 'U' has shape (2, 3, 29, 2), expected [M,N,T,dU] with T = 30 (as in dataset 'X')"]),
    ("samples", "rank_cost", set_dataset("cost", lambda a: a[..., None]), ["dataset 'cost' has shape (2, 3, 30, 1), expected [M,N,T]"]),
    ("samples", "obs_N", set_dataset("obs", lambda a: a[:, :2]), ["dataset 'obs' has shape (2, 2, 30, 10)", "with N = 3"]),
    ("samples", "empty", set_dataset("X", lambda a: a[:0]), ["dataset 'X' has shape (0, 3, 30, 10)", "M >= 1"]),
    ("samples", "Cm_D", set_dataset("Cm", lambda a: a[..., :-1, :-1]),
     ["dataset 'Cm' has shape (2, 30, 11, 11), expected [M,T,D,D] with D = 12 (dX + dU"]),
    ("samples", "cv_T", set_dataset("cv", lambda a: a[:, 1:]), ["dataset 'cv' has shape (2, 29, 12)", "T = 30"]),
    ("samples", "asym_Cm", set_dataset("Cm", asym_last2), ["dataset 'Cm' is not symmetric"]),
    # policy.h5 (after an S-step, so with Adam state), read by fit-policy
    ("policy", "missing", None, ["file not found"]),
    ("policy", "not_hdf5", None, ["not an HDF5 file"]),
    ("policy", "schema", set_attr("schema_version", 0), ["schema_version is 0, expected 1"]),
    ("policy", "no_W1", delete("policy/W1"), ["dataset 'policy/W1' is missing"]),
    ("policy", "no_var", delete("policy/var"), ["dataset 'policy/var' is missing"]),
    ("policy", "no_n_layers", del_attr("n_layers"), ["attribute 'n_layers' is missing"]),
    ("policy", "str_n_layers", set_attr("n_layers", "three"), ["attribute 'n_layers' is 'three', expected an integer >= 1"]),
    ("policy", "n_layers_short", set_attr("n_layers", 2),
     ["attribute 'n_layers' is 2, expected 3 (policy.hidden in params has 2 hidden layers)"]),
    ("policy", "extra_W3", add("policy/W3", np.zeros((2, 2))), ["dataset 'policy/W3' is present but attribute 'n_layers' is 3"]),
    ("policy", "int_W0", set_dataset("policy/W0", as_int), ["dataset 'policy/W0' has dtype int64, expected float64"]),
    ("policy", "str_var", set_dataset("policy/var", as_string), ["dataset 'policy/var' has dtype string, expected float64"]),
    ("policy", "nan_b1", set_dataset("policy/b1", nan_first), ["dataset 'policy/b1' contains NaN or Inf"]),
    ("policy", "inf_scale", set_dataset("policy/obs_scale", first(-np.inf)), ["dataset 'policy/obs_scale' contains NaN or Inf"]),
    ("policy", "W1_in", set_dataset("policy/W1", lambda a: a[:, :-1]),
     ["dataset 'policy/W1' has shape (40, 39), expected [h2,h1] with h1 = 40"]),
    ("policy", "b2_len", set_dataset("policy/b2", lambda a: a[:-1]), ["dataset 'policy/b2' has shape (1,), expected [dU] with dU = 2"]),
    ("policy", "bias_len", set_dataset("policy/obs_bias", lambda a: a[:-1]), ["dataset 'policy/obs_bias' has shape (9,), expected [dO] with dO = 10"]),
    ("policy", "var_rank", set_dataset("policy/var", np.diag), ["dataset 'policy/var' has shape (2, 2), expected [dU]"]),
    ("policy", "var_negative", set_dataset("policy/var", first(-0.1)), ["dataset 'policy/var' has an entry -0.1, expected every entry > 0"]),
    ("policy", "var_zero", set_dataset("policy/var", first(0.0)), ["dataset 'policy/var' has an entry 0, expected every entry > 0"]),
    ("policy", "adam_shape", set_dataset("adam/exp_avg2", lambda a: a[:-1]),
     ["dataset 'adam/exp_avg2' has shape (39, 40), expected [h2,h1] with h2 = 40 (as in the policy weights)"]),
    ("policy", "adam_missing", delete("adam/exp_avg_sq5"), ["dataset 'adam/exp_avg_sq5' is missing"]),
    ("policy", "adam_negative", set_dataset("adam/exp_avg_sq1", first(-1.0)),
     ["dataset 'adam/exp_avg_sq1' has an entry -1, expected every entry >= 0"]),
    ("policy", "adam_step", set_attr("adam_step", -3), ["attribute 'adam_step' is -3, expected an integer >= 0"]),
    ("policy", "adam_without_step", del_attr("adam_step"),
     ["dataset 'adam/exp_avg0' is present but attribute 'adam_step' is missing"]),
    ("policy", "other_dO", both(set_dataset("policy/W0", lambda a: a[:, :-1]), set_dataset("policy/obs_scale", lambda a: a[:-1]),
                                set_dataset("policy/obs_bias", lambda a: a[:-1])),
     ["dataset 'policy/W0' has shape (40, 9), expected [h1,dO] with dO = 10 (as in", "x.h5)"]),
    # step.h5, read by the C-step (and by adjust-step as --prev-step)
    ("step", "missing", None, ["file not found"]),
    ("step", "not_hdf5", None, ["not an HDF5 file"]),
    ("step", "schema", del_attr("schema_version"), ["schema_version is None, expected 1"]),
    ("step", "no_step_mult", delete("step_mult"), ["dataset 'step_mult' is missing"]),
    ("step", "int", set_dataset("step_mult", as_int), ["dataset 'step_mult' has dtype int64, expected float64"]),
    ("step", "str", set_dataset("step_mult", lambda a: b"1.0"), ["dataset 'step_mult' has dtype string, expected float64"]),
    ("step", "nan", set_dataset("step_mult", nan_first), ["dataset 'step_mult' contains NaN or Inf"]),
    ("step", "inf", set_dataset("step_mult", first(np.inf)), ["dataset 'step_mult' contains NaN or Inf"]),
    ("step", "scalar", set_dataset("step_mult", lambda a: a[0]), ["dataset 'step_mult' has shape (), expected [M]"]),
    ("step", "rank", set_dataset("step_mult", lambda a: a[:, None]), ["dataset 'step_mult' has shape (2, 1), expected [M]"]),
    ("step", "too_few", set_dataset("step_mult", lambda a: a[:1]), ["dataset 'step_mult' has shape (1,), expected [M] with M = 2 (as in"]),
    ("step", "too_many", set_dataset("step_mult", lambda a: np.ones(3)), ["dataset 'step_mult' has shape (3,), expected [M] with M = 2"]),
    ("step", "zero", set_dataset("step_mult", first(0.0)), ["dataset 'step_mult' has an entry 0, expected every entry > 0"]),
    ("step", "negative", set_dataset("step_mult", first(-0.5)), ["dataset 'step_mult' has an entry -0.5, expected every entry > 0"]),
    ("adjust_prev_step", "too_many", set_dataset("step_mult", lambda a: np.ones(3)), ["dataset 'step_mult' has shape (3,), expected [M] with M = 2"]),
    ("adjust_prev_step", "negative", set_dataset("step_mult", first(-1.0)), ["dataset 'step_mult' has an entry -1, expected every entry > 0"]),
    # dynamics.h5, read by the C-step
    ("dynamics", "int_fv", set_dataset("fv", as_int), ["dataset 'fv' has dtype int64, expected float64"]),
    ("dynamics", "nan_Fm", set_dataset("Fm", nan_first), ["dataset 'Fm' contains NaN or Inf"]),
    ("dynamics", "no_x0mu", delete("x0mu"), ["dataset 'x0mu' is missing"]),
    ("dynamics", "Fm_D", set_dataset("Fm", lambda a: a[..., :-1]),
     ["dataset 'Fm' has shape (2, 30, 10, 11), expected [M,T,dX,D] with D = 12 (dX + dU, as in"]),
    ("dynamics", "asym_covar", set_dataset("dyn_covar", asym_last2), ["dataset 'dyn_covar' is not symmetric"]),
    ("dynamics", "asym_x0sigma", set_dataset("x0sigma", asym_last2), ["dataset 'x0sigma' is not symmetric"]),
    ("dynamics", "indef_x0sigma", set_dataset("x0sigma", not_pd_last2), ["dataset 'x0sigma' is not positive definite"]),
    # the previous dynamics.h5 (prior buffer and GMM), read by fit-dynamics --prev
    ("dyn_prior", "no_prior_U", delete("prior/U"), ["dataset 'prior/U' is missing"]),
    ("dyn_prior", "prior_dX", set_dataset("prior/X", lambda a: a[..., :-1]),
     ["dataset 'prior/X' has shape (2, 3, 30, 9), expected [M,Nb,T,dX] with dX = 10 (as in"]),
    ("dyn_prior", "gmm_missing", delete("prior/gmm_logmass"), ["dataset 'prior/gmm_logmass' is missing"]),
    # a --prev file without its GMM is an error, not "no prior yet" (that is leaving out --prev)
    ("dyn_prior", "no_gmm", both(*(delete(f"prior/gmm_{x}") for x in ("mu", "sigma", "logmass", "n_init"))),
     ["dataset 'prior/gmm_mu' is missing"]),
    ("dyn_prior", "no_prior", delete("prior"), ["dataset 'prior/X' is missing"]),
    ("dyn_prior", "gmm_width", set_dataset("prior/gmm_mu", lambda a: a[..., :-1]),
     ["dataset 'prior/gmm_mu' has shape (2, 2, 21), expected [M,K,E] with E = 22 (2 dX + dU"]),
    ("dyn_prior", "gmm_n_init_float", set_dataset("prior/gmm_n_init", lambda a: a.astype(float)),
     ["dataset 'prior/gmm_n_init' has dtype float64, expected an integer type"]),
    ("dyn_prior", "gmm_asym", set_dataset("prior/gmm_sigma", asym_last2), ["dataset 'prior/gmm_sigma' is not symmetric"]),
    ("dyn_prior", "gmm_indef", set_dataset("prior/gmm_sigma", not_pd_last2), ["dataset 'prior/gmm_sigma' is not positive definite"]),
    # the previous policy_lin.h5 (GMM warm start), read by fit-policy --prev
    ("lin_prior", "gmm_width", set_dataset("prior/gmm_sigma", lambda a: a[..., 1:, 1:]),
     ["dataset 'prior/gmm_sigma' has shape (2, 2, 11, 11), expected [M,K,E,E] with E = 12 (dX + dU, as in"]),
    ("lin_prior", "gmm_nan", set_dataset("prior/gmm_logmass", nan_first), ["dataset 'prior/gmm_logmass' contains NaN or Inf"]),
    ("lin_prior", "no_prior", delete("prior"), ["dataset 'prior/gmm_mu' is missing"]),
    ("lin_prior", "no_gmm_sigma", delete("prior/gmm_sigma"), ["dataset 'prior/gmm_sigma' is missing"]),
    # the C-step's policy_lin.h5 and previous controllers (eta)
    ("policy_lin", "other_M", both(*(set_dataset(n, lambda a: a[:1]) for n in ("K", "k", "pol_covar"))),
     ["dataset 'K' has shape (1, 30, 2, 10), expected [M,T,dU,dX] with M = 2 (as in"]),
    ("policy_lin", "indef", set_dataset("pol_covar", not_pd_last2), ["dataset 'pol_covar' is not positive definite"]),
    ("prev_controllers", "no_eta", delete("eta"), ["dataset 'eta' is missing"]),
    ("prev_controllers", "eta_M", set_dataset("eta", lambda a: a[:1]), ["dataset 'eta' has shape (1,), expected [M] with M = 2"]),
    ("prev_controllers", "eta_negative", set_dataset("eta", first(-1.0)), ["dataset 'eta' has an entry -1, expected every entry > 0"]),
    # controllers.h5 whose actions the S-step imitates
    ("controllers", "other_T", both(*(set_dataset(n, lambda a: a[:, :-1]) for n in ("K", "k", "pol_covar"))),
     ["dataset 'K' has shape (2, 29, 2, 10), expected [M,T,dU,dX] with T = 30 (as in"]),
    ("controllers", "int_K", set_dataset("K", as_int), ["dataset 'K' has dtype int64, expected float64"]),
]


@pytest.fixture(scope="module")
def run0(init_dir, tmp_path_factory):
    """Iteration 0 by hand: samples, dynamics, policy linearisation, C-step, and an S-step (policy with Adam state)."""
    d = tmp_path_factory.mktemp("run0")
    p = ["--params", str(init_dir / "params.yaml")]
    for args in (
        ["sample", "-i", "0", "--controllers", init_dir / "c.h5", "--policy", init_dir / "p.h5", "--out", d / "x.h5"],
        ["fit-dynamics", "-i", "0", "--samples", d / "x.h5", "--out", d / "dyn.h5"],
        ["fit-policy", "-i", "0", "--samples", d / "x.h5", "--policy", init_dir / "p.h5", "--out", d / "lin.h5"],
        ["c-step", "-i", "0", "--samples", d / "x.h5", "--dynamics", d / "dyn.h5", "--policy-lin", d / "lin.h5",
         "--step", init_dir / "s.h5", "--prev-controllers", init_dir / "c.h5", "--out", d / "new.h5"],
        ["s-step", "-i", "0", "--samples", d / "x.h5", "--controllers", d / "new.h5", "--policy", init_dir / "p.h5",
         "--out", d / "pol.h5"],
    ):
        result = runner.invoke(app, [*map(str, args), *p])
        assert result.exit_code == 0, result.output
    (d / "s.h5").write_bytes((init_dir / "s.h5").read_bytes())
    return d


def reading_command(kind: str, d, init_dir, bad, out) -> list:
    """The stage command that reads an input of this kind, with `bad` in its place."""
    files = {"samples": d / "x.h5", "dynamics": d / "dyn.h5", "policy_lin": d / "lin.h5", "step": d / "s.h5",
             "prev_controllers": init_dir / "c.h5", "controllers": d / "new.h5", "policy": d / "pol.h5",
             "dyn_prior": d / "dyn.h5", "lin_prior": d / "lin.h5", "adjust_prev_step": d / "s.h5"}
    files[kind] = bad
    f = files
    c_step = ["c-step", "-i", "0", "--samples", f["samples"], "--dynamics", f["dynamics"], "--policy-lin", f["policy_lin"],
              "--step", f["step"], "--prev-controllers", f["prev_controllers"], "--out", out]
    return {
        "samples": ["fit-dynamics", "-i", "0", "--samples", f["samples"], "--out", out],
        "dyn_prior": ["fit-dynamics", "-i", "1", "--samples", f["samples"], "--prev", f["dyn_prior"], "--out", out],
        "policy": ["fit-policy", "-i", "1", "--samples", f["samples"], "--policy", f["policy"], "--out", out],
        "lin_prior": ["fit-policy", "-i", "1", "--samples", f["samples"], "--policy", f["policy"], "--prev", f["lin_prior"],
                      "--out", out],
        "step": c_step, "dynamics": c_step, "policy_lin": c_step, "prev_controllers": c_step,
        "controllers": ["s-step", "-i", "1", "--samples", f["samples"], "--controllers", f["controllers"], "--policy",
                        f["policy"], "--out", out],
        # iteration 0 files stand in for both iterations: same problem, so only the bad file differs
        "adjust_prev_step": ["adjust-step", "-i", "1", "--prev-samples", f["samples"], "--prev-dynamics", f["dynamics"],
                             "--prev-policy-lin", f["policy_lin"], "--prev-controllers", f["controllers"],
                             "--prev-step", f["adjust_prev_step"], "--samples", f["samples"], "--dynamics", f["dynamics"],
                             "--policy-lin", f["policy_lin"], "--out", out],
    }[kind]


def make_bad(kind, name, how, run0, tmp_path):
    bad = tmp_path / f"bad_{kind}_{name}.h5"
    if name == "not_hdf5":
        bad.write_text("this is not HDF5\n")
    elif how is not None:
        copy_and(how)(run0 / SOURCES[kind], bad)
    return bad


def run_bad(kind, bad, run0, init_dir, out):
    args = reading_command(kind, run0, init_dir, bad, out)
    return runner.invoke(app, [*map(str, args), "--params", str(init_dir / "params.yaml")])


@pytest.mark.parametrize("kind,name,how,words", BAD_INPUTS, ids=[f"{c[0]}-{c[1]}" for c in BAD_INPUTS])
def test_bad_input_one_line_exit_2_no_output(run0, init_dir, tmp_path, kind, name, how, words):
    bad = make_bad(kind, name, how, run0, tmp_path)
    out = tmp_path / "out" / "result.h5"
    result = run_bad(kind, bad, run0, init_dir, out)
    message = result.output.strip()
    assert result.exit_code == 2, message + repr(result.exception)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("gps ") and ": error: " in message and str(bad) in message, message
    for word in words:
        assert word in message, message
    assert not out.exists()
    assert not list(tmp_path.rglob(".result.h5*")), "a temporary file was left behind"


def test_every_stage_checks_the_whole_samples_file(run0, init_dir, tmp_path):
    """A NaN in the cost expansion stops even the stages that read only X, U or obs."""
    bad = make_bad("samples", "nan_cc", set_dataset("cc", nan_first), run0, tmp_path)
    out = tmp_path / "result.h5"
    stages = {"samples": "fit-dynamics", "policy": "fit-policy", "controllers": "s-step", "step": "c-step"}
    for kind, command in stages.items():
        files_kind = kind
        args = reading_command(files_kind, run0, init_dir, run0 / SOURCES[kind], out)
        args[args.index("--samples") + 1] = bad
        result = runner.invoke(app, [*map(str, args), "--params", str(init_dir / "params.yaml")])
        message = result.output.strip()
        assert result.exit_code == 2 and message == f"gps {command}: error: {bad}: dataset 'cc' contains NaN or Inf", message
        assert not out.exists()
    args = reading_command("adjust_prev_step", run0, init_dir, run0 / "s.h5", out)
    args[args.index("--samples") + 1] = bad
    result = runner.invoke(app, [*map(str, args), "--params", str(init_dir / "params.yaml")])
    assert result.exit_code == 2 and f"{bad}: dataset 'cc' contains NaN or Inf" in result.output, result.output


def test_policy_must_match_the_hidden_sizes_in_params(run0, init_dir, tmp_path):
    params = small_params()
    params["policy"]["hidden"] = [30, 40]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "lin.h5"
    args = ["fit-policy", "-i", "1", "--samples", run0 / "x.h5", "--policy", run0 / "pol.h5", "--out", out]
    result = runner.invoke(app, [*map(str, args), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip() == (f"gps fit-policy: error: {run0 / 'pol.h5'}: dataset 'policy/W0' has shape (40, 10), "
                                     "expected [h1,dO] with h1 = 30 (policy.hidden in params)"), result.output
    params["policy"]["hidden"] = [40]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, [*map(str, args), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2 and "attribute 'n_layers' is 3, expected 2 (policy.hidden in params has 1 hidden layers)" in result.output


def test_sample_checks_controllers_and_policy_against_the_model(run0, init_dir, tmp_path):
    """Off-policy (iteration 0): controllers for another horizon; on-policy: a network with another action size."""
    p = ["--params", str(init_dir / "params.yaml")]
    out = tmp_path / "x.h5"
    short = tmp_path / "short.h5"
    copy_and(both(*(set_dataset(n, lambda a: a[:, :-1]) for n in ("K", "k", "pol_covar"))))(init_dir / "c.h5", short)
    result = runner.invoke(app, ["sample", "-i", "0", "--controllers", str(short), "--policy", str(run0 / "pol.h5"), "--out", str(out), *p])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip() == (f"gps sample: error: {short}: dataset 'K' has shape (2, 29, 2, 10), "
                                     "expected [M,T,dU,dX] with T = 30 (task.T in params)"), result.output
    wide = tmp_path / "wide.h5"
    copy_and(both(set_dataset("policy/W2", lambda a: np.concatenate([a, a[:1]])), set_dataset("policy/b2", lambda a: np.append(a, 0.0)),
                  set_dataset("policy/var", lambda a: np.append(a, 1.0)), delete("adam/exp_avg4")))(run0 / "pol.h5", wide)
    result = runner.invoke(app, ["sample", "-i", "1", "--controllers", str(run0 / "new.h5"), "--policy", str(wide), "--out", str(out), *p])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.strip() == (f"gps sample: error: {wide}: dataset 'policy/W2' has shape (3, 40), "
                                     "expected [dU,h2] with dU = 2 (actions of the model)"), result.output


EVALUATE_CASES = [
    ("samples", "x.h5", set_dataset("cost", nan_first), "dataset 'cost' contains NaN or Inf"),
    ("samples", "x.h5", set_dataset("U", lambda a: a[:, :, :-1]), "dataset 'U' has shape"),
    ("controllers", "new.h5", set_dataset("eta", lambda a: -a), "dataset 'eta' has an entry"),
    ("controllers", "new.h5", set_dataset("kl_step", lambda a: a[:1]), "dataset 'kl_step' has shape (1,)"),
    ("step", "s.h5", set_dataset("step_mult", lambda a: a.astype(np.int64)), "dataset 'step_mult' has dtype int64"),
    ("policy", "pol.h5", set_dataset("policy/var", lambda a: 0 * a), "dataset 'policy/var' has an entry 0"),
]


@pytest.mark.parametrize("kind,source,how,words", EVALUATE_CASES, ids=[f"{c[0]}-{c[3][:20]}" for c in EVALUATE_CASES])
def test_evaluate_checks_its_inputs_before_writing(run0, init_dir, tmp_path, kind, source, how, words):
    bad = tmp_path / f"bad_{source}"
    copy_and(how)(run0 / source, bad)
    files = {"samples": run0 / "x.h5", "controllers": run0 / "new.h5", "step": run0 / "s.h5", "policy": run0 / "pol.h5"}
    files[kind] = bad
    out, metrics = tmp_path / "out" / "eval.h5", tmp_path / "out" / "metrics.json"
    args = ["evaluate", "-i", "0", "--policy", files["policy"], "--samples", files["samples"], "--controllers",
            files["controllers"], "--step", files["step"], "--out", out, "--metrics", metrics]
    result = runner.invoke(app, [*map(str, args), "--params", str(init_dir / "params.yaml")])
    message = result.output.strip()
    assert result.exit_code == 2 and "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"gps evaluate: error: {bad}: ") and words in message, message
    assert not out.exists() and not metrics.exists()



WRONG_FILES = [
    # (reading command's input kind, the file of another stage given for it, the dataset it lacks)
    ("dyn_prior", "x.h5", "prior/X"),  # samples instead of the previous dynamics
    ("lin_prior", "new.h5", "prior/gmm_mu"),  # the C-step's controllers instead of the previous policy_lin.h5
    ("prev_controllers", "lin.h5", "eta"),  # a linearisation has no eta to warm-start the dual search
]


@pytest.mark.parametrize("kind,source,dataset", WRONG_FILES, ids=[w[0] for w in WRONG_FILES])
def test_a_given_file_without_the_datasets_read_is_an_error(run0, init_dir, tmp_path, kind, source, dataset):
    """Another stage's file in place of a prior or an eta source: one line naming it and the dataset, exit 2."""
    bad = run0 / source
    out = tmp_path / "out" / "result.h5"
    result = run_bad(kind, bad, run0, init_dir, out)
    message = result.output.strip()
    assert result.exit_code == 2 and "\n" not in message, message + repr(result.exception)
    assert message.endswith(f": error: {bad}: dataset {dataset!r} is missing"), message
    assert not out.exists()


def test_badmm_inner_reads_the_policy_prior_only_from_a_file_that_has_it(run0):
    """badmm-inner's --policy-lin GMMs (the refits' warm start) go through the same required loader."""
    from stages.artifacts.checks import known_from, load_samples
    from stages.artifacts.priors import gmms_from_datasets, load_policy_lin_prior
    from stages.artifacts.io import read_artifact
    from stages.errors import UserError

    _, sizes = load_samples(run0 / "x.h5")
    known = known_from(sizes, run0 / "x.h5")
    assert len(gmms_from_datasets("prior", load_policy_lin_prior(run0 / "lin.h5", known), sizes["M"])) == sizes["M"]
    with pytest.raises(UserError, match=f"^{run0 / 'new.h5'}: dataset 'prior/gmm_mu' is missing$"):
        load_policy_lin_prior(run0 / "new.h5", known)
    with pytest.raises(UserError, match=f"^{run0 / 'new.h5'}: dataset 'prior/gmm_mu' is missing$"):
        gmms_from_datasets("prior", read_artifact(run0 / "new.h5")[0], sizes["M"], str(run0 / "new.h5"))
