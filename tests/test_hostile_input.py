"""Hostile and malformed input: property-based specs and files. Never a traceback,
always an error that names the input; nothing the project loads can execute code."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedro.io import DatasetError

from giblet_kedro.datasets.arrays import NpyDataset
from giblet_kedro.datasets.nifti import load_nifti
from giblet_kedro.datasets.torch_state import TorchStateDictDataset
from giblet_kedro.errors import GibletError, InputDataError, SpecError
from giblet_kedro.preflight import user_error as _user_error
from giblet_kedro.spec.load import parse_spec

VALID = yaml.safe_load("""
name: hostile
seed: 0
fmri:
  subjects: {"01": raw/sub-01.nii.gz, "02": [raw/sub-02_run-1.nii.gz]}
  tr: 1.5
  trs: [0, 100]
  split: {val: 0.1, test: 0.1}
  clean: {detrend: true, high_pass_hz: 0.01, confounds: {files: {"01": a.txt, "02": b.txt}, skip_rows: 2}}
stimulus:
  video: {path: m.mp4, size: [160, 90], frames_per_tr: 3}
  audio: {path: m.mp4, bandwidth: 3.0}
  text: {annotations: a.xlsx, columns: [c]}
model: {bottleneck: 64, hidden: 32}
train: {epochs: 2, batch_size: 2, warmup_epochs: 0}
""")

# Values of every kind YAML can carry, including odd unicode and extreme numbers.
odd_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), odd_text,
    st.sampled_from(["", "../../etc/passwd", "/dev/null", "{demo}/x", "{id}", "ümlaut ☃ \u202e", "1e309", "-0"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(odd_text, inner, max_size=4)), max_leaves=12)


def test_the_base_spec_is_valid():
    """The mutations below start from a spec that parses, so they test what they change."""
    parse_spec(yaml.safe_dump(VALID))


def key_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield (*prefix, key)
            yield from key_paths(value, (*prefix, key))


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


PATHS = list(key_paths(VALID))
SECTIONS = [(), *(p for p in PATHS if isinstance(get(VALID, p), dict))]


def parse(data) -> None:
    """parse_spec on ``data`` dumped as YAML: a spec, or one SpecError (nothing else)."""
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        parse_spec(text, source="hostile.yml")
    except SpecError as exc:
        message = str(exc)
        assert "hostile.yml" in message and "Traceback" not in message
        assert len(message) < 20_000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_any_value_anywhere_is_accepted_or_named(path, value):
    data = copy.deepcopy(VALID)
    get(data, path[:-1])[path[-1]] = value
    parse(data)


@settings(max_examples=80, deadline=None)
@given(path=st.sampled_from(SECTIONS), key=odd_text, value=scalars)
def test_unknown_keys_are_named(path, key, value):
    data = copy.deepcopy(VALID)
    node = get(data, path)
    if key in node:
        return
    node[key] = value
    parse(data)


@settings(max_examples=60, deadline=None)
@given(section=st.sampled_from(list(VALID)))
def test_missing_sections_are_named(section):
    data = copy.deepcopy(VALID)
    del data[section]
    parse(data)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_never_a_traceback(text):
    try:
        parse_spec(text, source="noise.yml")
    except SpecError as exc:
        assert "noise.yml" in str(exc)


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=2000))
def test_random_bytes_as_nifti_name_the_file(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("nifti") / "sub-01.nii.gz"
    path.write_bytes(payload)
    try:
        image = load_nifti(path, label="subject '01'")
    except InputDataError as exc:
        assert str(path) in str(exc) or "subject '01'" in str(exc)
    else:  # a few byte strings are valid NIfTI headers by chance: then the run checks apply
        from giblet_kedro.fmri.reader import read_header

        try:
            read_header(image, "subject '01'")
        except GibletError as exc:
            assert "subject '01'" in str(exc)


class _Exploit:
    """Unpickling this would create ``marker``: code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pt"
    torch.save({"weight": _Exploit(marker)}, path)  # a real checkpoint file carrying the payload
    with pytest.raises(DatasetError, match="Weights only load failed"):
        TorchStateDictDataset(str(path)).load()
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, path)
    assert TorchStateDictDataset(str(path)).load()["w"].sum() == 2


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "fmri_train.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="Python objects|allow_pickle"):
        NpyDataset(str(path)).load()


def _bad_run(kind: str, path, rng):
    """Write one kind of malformed second subject at ``path``."""
    import nibabel as nib

    from tests.conftest import random_runs, write_run

    good = random_runs(rng, 1, grid=(5, 4, 3), n_trs=30)[0]
    if kind == "3D":
        nib.save(nib.Nifti1Image(good[..., 0].astype(np.float32), np.eye(4)), path)
    elif kind == "complex":
        nib.save(nib.Nifti1Image(good.astype(np.complex64), np.eye(4)), path)
    elif kind == "text file":
        path.write_text("this is not a NIfTI image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        write_run(path, good)
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "all NaN":
        write_run(path, np.full_like(good, np.nan), dtype=np.float32)
    elif kind == "one volume":
        write_run(path, good[..., :1])


@pytest.mark.parametrize("kind", ["3D", "complex", "text file", "empty", "truncated", "all NaN", "one volume"])
def test_malformed_runs_are_named_and_nothing_is_written(tmp_path, rng, kind):
    from tests.conftest import random_runs, write_run
    from tests.pipelines.test_fmri_nodes import run_stage

    first = write_run(tmp_path / "sub-01.nii.gz", random_runs(rng, 1, grid=(5, 4, 3), n_trs=30)[0])
    second = tmp_path / "sub-02.nii.gz"
    _bad_run(kind, second, rng)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(Exception) as info:  # noqa: B017 - the user error is somewhere in the chain
        run_stage({"01": str(first), "02": str(second)})
    error = _user_error(info.value)  # what `kedro run` prints, without a traceback
    assert isinstance(error, InputDataError), info.value
    message = str(error)
    assert "subject '02'" in message or str(second) in message, message
    assert "Traceback" not in message
    assert sorted(tmp_path.iterdir()) == before  # no partial output beside the inputs


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,40}\Z"),
       path=st.sampled_from(["../../../../etc/passwd", "/tmp/x.nii.gz", "~/a.nii.gz", "..", "a/../../b.nii.gz",
                             "\u202e.nii.gz", "C:\\\\x.nii"]))
def test_outputs_stay_under_the_data_folder_whatever_the_spec_says(tmp_path_factory, name, path):
    """Spec paths are only ever read; every cache the spec can name lies under data/."""
    from giblet_kedro.paths import data_dir
    from giblet_kedro.spec.compile import STAGES, compile_spec

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GIBLET_PROJECT_ROOT", str(tmp_path_factory.mktemp("project")))
        _check_outputs_stay_inside(name, path, data_dir, STAGES, compile_spec)


def _check_outputs_stay_inside(name, path, data_dir, stages, compile_spec):
    data = copy.deepcopy(VALID)
    data["name"] = name
    data["fmri"]["subjects"] = {"01": path}
    data["fmri"]["clean"]["confounds"]["files"] = {"01": path}
    data["stimulus"]["video"]["path"] = path
    spec = parse_spec(yaml.safe_dump(data, allow_unicode=True))
    compiled = compile_spec(spec, data_dir() / "x.yml", check_files=False)
    root = data_dir().resolve()
    for stage in stages:
        assert compiled.cache_dir(stage).resolve().is_relative_to(root), stage


@pytest.mark.parametrize("kind", ["text file", "empty", "3D"])
def test_preflight_names_a_malformed_run_itself_not_a_dataset_error(tmp_path, rng, kind):
    """The preflight (run before any node, on every path) raises the user's error, not
    Kedro's DatasetError wrapping it: `kedro run` prints it as one line."""
    from giblet_kedro.preflight import preflight
    from tests.conftest import random_runs, write_run

    first = write_run(tmp_path / "sub-01.nii.gz", random_runs(rng, 1, grid=(5, 4, 3), n_trs=30)[0])
    second = tmp_path / "sub-02.nii.gz"
    _bad_run(kind, second, rng)
    spec = tmp_path / "spec.yml"
    spec.write_text(yaml.safe_dump({"name": "bad", "fmri": {"subjects": {"01": str(first), "02": str(second)},
                                                            "tr": 1.5}}))
    with pytest.raises(InputDataError) as info:
        preflight(str(spec))
    assert str(second) in str(info.value) and not isinstance(info.value, DatasetError)
