"""Every JSON report validates against the schema shipped in cimguard/schemas/, provenance included."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

import jsonschema  # the test extra installs it: a missing package must fail, not skip
import referencing

SMALL = ("--max-samples", "40")


def _schemas() -> dict[str, dict]:
    folder = resources.files("cimguard") / "schemas"
    return {path.name: json.loads(path.read_text()) for path in folder.iterdir() if path.name.endswith(".json")}


def _validator(name: str):
    """A plain validator, as a user builds it: no registry; a retrieval attempt fails the test."""
    schema = _schemas()[f"{name}.schema.json"]
    jsonschema.Draft202012Validator.check_schema(schema)

    def refuse(uri: str):
        raise AssertionError(f"the schema tried to retrieve {uri}")

    return jsonschema.Draft202012Validator(schema, registry=referencing.Registry(retrieve=refuse),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_every_report_schema_carries_the_provenance_schema_it_refers_to():
    schemas = _schemas()
    provenance = schemas.pop("provenance.schema.json")
    assert {"evaluate", "attack", "harden", "compare", "inspect"} <= {name.split(".")[0] for name in schemas}
    for name, schema in schemas.items():
        assert schema["$defs"]["provenance"] == provenance, f"{name}: copy provenance.schema.json into $defs"


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_provenance(record: dict, model: Path, command: list[str]) -> dict:
    provenance = record["provenance"]
    assert provenance["command_line"] == ["cimguard", *command]
    assert provenance["model"] == {"path": str(model.resolve()), "sha256": _sha256(model)}
    for name in ("cimguard", "torch", "onnx", "onnx2torch", "onnxruntime"):
        assert provenance["versions"][name]
    return provenance


def test_evaluate_report(invoke, tmp_path, default_model_path):
    out = tmp_path / "e.json"
    command = ["evaluate", "--device", "pcm", "--device-param", "t=86400", "--samples", "2", *SMALL, "--json", str(out)]
    assert invoke(*command).exit_code == 0
    record = json.loads(out.read_text())
    _validator("evaluate").validate(record)
    provenance = _check_provenance(record, default_model_path, command)
    assert provenance["metric"] == record["metric"] == "accuracy"
    assert provenance["device"]["overrides"] == {"t": "86400"}
    assert provenance["device"]["parameters"]["t"] == 86400.0 and provenance["device"]["parameters"]["t0"] == 20.0
    assert provenance["data"]["samples"] == 40 and provenance["torch_device"] == "cpu"
    # crossbar.layers: the layers actually mapped (ONNX weight names), not the kinds that could be.
    assert record["setup"]["crossbar"]["layers"] == [
        "features.0.weight", "features.3.weight", "classifier.1.weight", "classifier.3.weight"]


def test_the_data_hash_follows_the_data(invoke, tmp_path):
    hashes = []
    for count in ("40", "41"):
        out = tmp_path / f"{count}.json"
        assert invoke("evaluate", "--samples", "0", "--max-samples", count, "--json", out).exit_code == 0
        hashes.append(json.loads(out.read_text())["provenance"]["data"]["sha256"])
    assert hashes[0] != hashes[1]


def test_attack_report_and_a_schema_violation_is_caught(invoke, tmp_path, default_model_path):
    out = tmp_path / "a.json"
    command = ["attack", "--samples", "0", "--iterations", "2", *SMALL, "--label-free", "--json", str(out)]
    assert invoke(*command).exit_code == 0
    record = json.loads(out.read_text())
    validator = _validator("attack")
    validator.validate(record)
    assert _check_provenance(record, default_model_path, command)["metric"] == "agreement"
    assert record["thg"] == ["device"] and record["points"][0]["box"] == "device"
    del record["provenance"]["versions"]["onnxruntime"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(record)


def test_compare_and_harden_reports(invoke, tmp_path, default_model_path, one_thread):
    hardened, harden_json = tmp_path / "h.onnx", tmp_path / "h.json"
    command = ["harden", "--trainer", "noise", "--epochs", "1", *SMALL, "-o", str(hardened), "--json", str(harden_json)]
    assert invoke(*command).exit_code == 0
    record = json.loads(harden_json.read_text())
    _validator("harden").validate(record)
    _check_provenance(record, default_model_path, command)
    assert record["output"] == {"path": str(hardened.resolve()), "sha256": _sha256(hardened)}

    out = tmp_path / "c.json"
    command = ["compare", str(default_model_path), str(hardened), "--thg", "device,0.01", "--samples", "2",
               "--iterations", "2", *SMALL, "--json", str(out)]
    assert invoke(*command).exit_code == 0
    record = json.loads(out.read_text())
    _validator("compare").validate(record)
    provenance = _check_provenance(record, default_model_path, command)
    assert [m["sha256"] for m in provenance["models"]] == [_sha256(default_model_path), _sha256(hardened)]
    assert record["thg"] == ["device", 0.01]


def test_inspect_report(invoke, default_model_path):
    command = ["inspect", str(default_model_path), "--json"]
    result = invoke(*command)
    assert result.exit_code == 0
    record = json.loads(result.output)
    _validator("inspect").validate(record)
    _check_provenance(record, default_model_path, command)


def test_cimguard_validate_picks_the_schema_from_the_report(invoke, tmp_path):
    from cimguard import validate_report
    from cimguard.errors import CimguardError

    out = tmp_path / "e.json"
    assert invoke("evaluate", "--samples", "2", *SMALL, "--json", out).exit_code == 0
    result = invoke("validate", out)
    assert result.exit_code == 0 and "a valid evaluate report (cimguard/schemas/evaluate.schema.json)" in result.output
    record = json.loads(out.read_text())
    assert validate_report(record) == "evaluate"
    record["provenance"]["versions"]["onnxruntime"] = 3
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(record))
    result = invoke("validate", broken)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {broken} is not a valid evaluate report: at provenance/versions/"
                                     "onnxruntime: 3 is not of type 'string'")
    with pytest.raises(CimguardError, match="not a cimguard report"):
        validate_report({"points": []})
    (tmp_path / "text.json").write_text("not json")
    assert "is not JSON" in invoke("validate", tmp_path / "text.json").output
    assert "report file not found" in invoke("validate", tmp_path / "missing.json").output
