"""The one name rule (components/names.py) and the staging guard: hostile names in every
spelling are refused before anything is touched, good names pass unchanged."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from components import names
from components.data.ingest import SourceChanged, scan_folder, stage_into_workspace

GOOD = ["elpv", "elpv-classifier", "a", "A1", "wafer_2024.v2", "x" * 100]
# Traversal in every spelling, absolute paths, separators, NUL and control characters,
# very long names, unicode look-alikes and shell metacharacters.
HOSTILE = [
    "", ".", "..", "../..", "../../x", "..\\..", "a/b", "a/../..", "/", "/etc", "/tmp/x", "~", "~root",
    "a\\b", "C:\\x", "a\0b", "\0", "a\nb", "a\rb", "a\tb", "a\x7fb", " a", "a ", "-rf", ".hidden", "_x",
    "x" * 129, "x" * 5000, "ａｂｃ", "é", "a\u202eb", "a\u200bb", "\u2024\u2024", "a;rm -rf ~", "$(id)", "`id`",
    "a|b", "a&b", "a>b", "a<b", "a*b", "a?b", "a'b", 'a"b', "a b", "%2e%2e", "..%2f..", "a:b", "a@b", "a#b",
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_unchanged(name):
    assert names.check_dataset(name) == name
    assert names.check_model(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_one_line(name):
    for check in (names.check_dataset, names.check_model, names.check_alias):
        with pytest.raises(names.InvalidName) as info:
            check(name)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_dataset_names_leave_room_for_derived_model_names():
    names.check_model("x" * 128)
    with pytest.raises(names.InvalidName, match="1-100"):
        names.check_dataset("x" * 101)
    names.check_model("x" * 100 + "-label-efficiency")


@pytest.mark.parametrize("ref", ["m", "m:1", "m:12", "m@production", "m@staging.2"])
def test_model_references(ref):
    assert names.check_model_ref(ref) == ref


@pytest.mark.parametrize("ref", ["m:0", "m:-1", "m:x", "m:", "m@", "m@../x", "../m:1", "m@1a", "m:1@a", "/m"])
def test_bad_model_references(ref):
    with pytest.raises(names.InvalidName):
        names.check_model_ref(ref)


def test_scratch_is_a_backbone_reference_only_where_allowed():
    assert names.check_model_ref("scratch", allow=("scratch",)) == "scratch"
    assert names.check_model_ref("scratch") == "scratch"  # also a valid model name


def test_class_lists_are_stripped_and_checked():
    assert names.parse_classes("crazing, scratches ,  pits") == ["crazing", "scratches", "pits"]
    for bad in ("a,,b", "a, a", " , ", "a,b\x00", "x" * 129):
        with pytest.raises(names.InvalidName):
            names.parse_classes(bad)


def test_child_path_stays_strictly_inside(tmp_path):
    assert names.child_path(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    (tmp_path / "link").symlink_to("/")
    for parts in (("..",), ("a", "..", ".."), ("/etc",), ("link", "etc"), ("",), (".",)):
        with pytest.raises(names.InvalidName):
            names.child_path(tmp_path, *parts)


def _image(path: Path, value: int) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20, 20), value).save(path)


def test_staging_refuses_a_target_outside_its_folder_and_deletes_nothing(tmp_path):
    src = tmp_path / "src"
    _image(src / "a.png", 10)
    precious = tmp_path / "home" / "registry.db"
    precious.parent.mkdir()
    precious.write_bytes(b"keep me")
    data = tmp_path / "home" / "dvc-repo" / "data"
    data.mkdir(parents=True)
    scan = scan_folder(src, progress=False)
    for target in (data / ".." / "..", data, data / "..", tmp_path):
        with pytest.raises(ValueError, match="not strictly inside"):
            stage_into_workspace(scan, src, target, root=data)
    assert precious.read_bytes() == b"keep me"
    assert stage_into_workspace(scan, src, data / "ds", root=data)["copied"] == 1


def test_a_file_rewritten_after_the_scan_is_not_staged(tmp_path):
    """Probe 2: the scan hashed one content, the file then changed: staging refuses it
    (with the file named) instead of versioning the new bytes under the old hash."""
    src = tmp_path / "src"
    _image(src / "a.png", 10)
    _image(src / "b.png", 200)
    scan = scan_folder(src, progress=False)
    _image(src / "b.png", 90)  # rewritten between the scan and the staging
    workspace = tmp_path / "repo" / "data" / "ds"
    with pytest.raises(SourceChanged, match="b.png changed after it was validated"):
        stage_into_workspace(scan, src, workspace, root=tmp_path / "repo" / "data")
    staged = {p.name for p in workspace.rglob("*")} if workspace.exists() else set()
    assert "b.png" not in staged and not any(n.endswith(".tmp") for n in staged)


def test_a_name_near_the_file_system_limit_stages(tmp_path):
    src = tmp_path / "src"
    name = "n" * (250 - len(".png")) + ".png"
    _image(src / name, 10)
    scan = scan_folder(src, progress=False)
    if not scan.good:  # quarantined as name_too_long by the scan: also fine, nothing fails
        assert scan.bad[0].reason == "name_too_long"
        return
    stage_into_workspace(scan, src, tmp_path / "repo" / "data" / "ds", root=tmp_path / "repo" / "data")
    assert os.path.exists(tmp_path / "repo" / "data" / "ds" / name)


def test_only_transient_failures_are_retried():
    """Probe 4: deterministic failures (name too long, 403, missing bucket, bad input) are
    not retried; dead connections and 5xx are."""
    import errno

    import urllib3
    from minio.error import S3Error, ServerError

    from components.data.dvc import DvcError
    from components.failures import is_transient
    from components.storage import ArtifactError, ArtifactMissing

    def wrapped(cause: BaseException) -> ArtifactError:
        try:
            raise ArtifactError("store failed") from cause
        except ArtifactError as exc:
            return exc

    def s3(code: str) -> S3Error:
        return S3Error(code, code, "r", "req", "host", None)

    permanent = [OSError(errno.ENAMETOOLONG, "File name too long"), ValueError("bad input"),
                 wrapped(s3("AccessDenied")), wrapped(s3("NoSuchBucket")), ArtifactMissing("s3://b/k/" + "0" * 64 + "/x"),
                 DvcError(["dvc", "push"], 1, "ERROR: failed to push: An error occurred (403) Forbidden"),
                 DvcError(["dvc", "push"], 1, "ERROR: NoSuchBucket: The specified bucket does not exist"),
                 wrapped(PermissionError(errno.EACCES, "denied"))]
    transient = [ConnectionRefusedError(), TimeoutError(), wrapped(urllib3.exceptions.NewConnectionError(None, "refused")),
                 wrapped(s3("SlowDown")), wrapped(ServerError("bad gateway", 502)),
                 DvcError(["dvc", "push"], 1, "ERROR: Could not connect to the endpoint URL: http://127.0.0.1:9"),
                 DvcError(["dvc", "push"], 1, "ERROR: Read timeout on endpoint URL")]
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
    assert [is_transient(e) for e in transient] == [True] * len(transient)


def test_the_io_tasks_retry_condition_reads_the_failed_state():
    import errno

    from prefect.states import Failed

    from flows.tasks import IO_RETRIES, retry_if_transient

    assert IO_RETRIES["retry_condition_fn"] is retry_if_transient
    assert retry_if_transient(None, None, Failed(data=OSError(errno.ENAMETOOLONG, "File name too long"))) is False
    assert retry_if_transient(None, None, Failed(data=ConnectionResetError())) is True


def test_smaller_surprises_of_the_ingest(tmp_path):
    """Probe 14: a link out of the folder is quarantined, hidden names are reported, and an
    unchanged re-ingest reuses its quarantine folder."""
    from components.data.ingest import quarantine, unchanged_quarantine

    src, outside = tmp_path / "src", tmp_path / "outside.png"
    _image(src / "a.png", 10)
    _image(src / "..name.png", 20)
    _image(outside, 30)
    (src / "link.png").symlink_to(outside)
    (src / "bad.png").write_bytes(b"not a png")
    scan = scan_folder(src, progress=False)
    assert [r.path for r in scan.good] == ["a.png"]
    assert {b.path: b.reason for b in scan.bad} == {"link.png": "link_outside", "bad.png": "not_an_image"}
    assert scan.hidden == ["..name.png"]
    qdir = tmp_path / "q" / "ds"
    assert unchanged_quarantine(scan, src, qdir) is None
    quarantine(scan, src, qdir / "20260101T000000")
    assert unchanged_quarantine(scan_folder(src, progress=False), src, qdir) == qdir / "20260101T000000"
    (src / "bad.png").write_bytes(b"still not a png")
    assert unchanged_quarantine(scan_folder(src, progress=False), src, qdir) is None


def test_a_single_choice_given_as_a_string_is_one_choice():
    from components.labeling.snapshots import build_label_snapshot

    manifest = {"images": [{"path": "a.png", "sha256": "0" * 64}], "content_hash": "x"}
    task = {"id": 1, "data": {"image": "a.png"},
            "annotations": [{"id": 1, "result": [{"type": "choices", "value": {"choices": "functional"}}]}]}
    snap = build_label_snapshot([task], manifest)
    assert [it["label"] for it in snap.items] == ["functional"] and snap.issues == []
