"""`mlxsft push RUN|EXPORT --repo user/name`: upload to the Hugging Face hub with a model card.

A run is uploaded as its PEFT adapter (exported and parity-checked into a temp folder
first); an export (any folder `mlxsft export` wrote, or a .gguf file with its parity
report) is uploaded as it is. Either way a README.md model card is generated from the
run: base model, method, data, hyperparameters, the eval results and chosen checkpoint
when the judge stored them, the parity report, and usage snippets.

The upload is one `upload_folder` commit through huggingface_hub (HF_ENDPOINT is
honoured), so the hub gets all files or none. No token, a refused repository or a
dropped connection are ExportErrors that say what to do; local files are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from ..hub import HubSettings
from ..rundir import RunDir
from .errors import ExportError
from .peft import export_peft


def find_token(token: str | None = None) -> str:
    """The token to upload with: given, HF_TOKEN, or the one `hf auth login` saved."""
    if token:
        return token
    try:
        from huggingface_hub import get_token  # optional: only push needs the hub client

        found = get_token()
    except ImportError:
        raise ExportError("push needs huggingface_hub: pip install huggingface_hub") from None
    if not found:
        raise ExportError(
            "push needs a Hugging Face token with write access: set HF_TOKEN, or run "
            "`hf auth login` (tokens: https://huggingface.co/settings/tokens)."
        )
    return found


def _run_of(target: Path) -> tuple[RunDir, Path | None]:
    """(the run, the export path or None) for a run dir or an export of one."""
    if RunDir(target).exists():
        return RunDir(target), None
    parity = target / "parity.json" if target.is_dir() else target.with_name(target.name + ".parity.json")
    if not parity.is_file():
        raise ExportError(
            "not a run directory or an mlxsft export (no recipe.yaml, no parity report).", path=str(target)
        )
    run = json.loads(parity.read_text(encoding="utf-8")).get("source", {}).get("run")
    return RunDir(run) if run else RunDir(target), target


def stage_upload(target: Path, folder: Path, checkpoint=None) -> tuple[RunDir, dict]:
    """Fill `folder` with what to upload; return the run and the parity report."""
    run, export = _run_of(target)
    if export is None:
        export = export_peft(run.path, folder / "adapter", checkpoint=checkpoint)
        for f in export.iterdir():
            shutil.move(f, folder / f.name)
        export.rmdir()
        parity = folder / "parity.json"
    elif export.is_dir():
        shutil.copytree(export, folder, dirs_exist_ok=True)
        parity = folder / "parity.json"
    else:
        shutil.copyfile(export, folder / export.name)
        parity = export.with_name(export.name + ".parity.json")
        shutil.copyfile(parity, folder / parity.name)
    report = json.loads(parity.read_text(encoding="utf-8")) if parity.is_file() else {}
    return run, report


def push(
    target: str | Path,
    repo: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    checkpoint=None,
) -> str:
    """Upload a run's adapter (at `checkpoint`, default the chosen one) or an export to `repo`;
    returns the commit URL."""
    from huggingface_hub import HfApi  # optional: only push needs the hub client (find_token said so)
    from huggingface_hub.errors import HfHubHTTPError

    target = Path(target)
    if not target.exists():
        raise ExportError("nothing to push here.", path=str(target))
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ExportError(f"--repo must be user/name (or org/name), got {repo!r}.")
    token = find_token(token)
    hub = HubSettings.from_env()  # read now, not at import: a long-lived process sees changes
    if hub.offline:
        raise ExportError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push.")
    hub.apply()
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    with tempfile.TemporaryDirectory(prefix="mlxsft-push-") as tmp:
        folder = Path(tmp)
        run, report = stage_upload(target, folder, checkpoint)
        (folder / "README.md").write_text(model_card(run, report, repo, list_files(folder)), encoding="utf-8")
        api = HfApi(endpoint=endpoint, token=token)
        print(f"Uploading {target} to {repo} ({'private' if private else 'public'}) ...")
        try:
            api.create_repo(repo, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"mlxsft push of {run.path.name}")
        except HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            if status in (401, 403):
                raise ExportError(
                    f"the hub refused the upload to {repo} (HTTP {status}): the token cannot write "
                    "there. Use a token with write access to that user or organisation."
                ) from None
            raise ExportError(f"the hub answered an error for {repo}: {err}. Nothing was committed.") from None
        except _transport_errors() as err:  # connection refused, reset or dropped
            raise ExportError(
                f"the upload to {repo} did not finish ({err.__class__.__name__}: {err}). The hub "
                "commits all files or none; run the same push again."
            ) from None
    url = getattr(info, "commit_url", None) or str(info)
    print(f"Pushed to {repo}: {url}")
    return url


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as huggingface_hub's HTTP client raises them (httpx2 in
    huggingface_hub 2.x, httpx in 1.x, requests' OSErrors before)."""
    import importlib

    errors: tuple[type[BaseException], ...] = (OSError,)
    for name in ("httpx2", "httpx"):
        try:
            errors += (importlib.import_module(name).TransportError,)
        except (ImportError, AttributeError):
            pass
    return errors


def list_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the model card


def model_card(run: RunDir, parity: dict, repo: str, files: list[str]) -> str:
    """README.md for the hub: YAML metadata, what was trained on what, how it did, how to use it."""
    meta = run.read_meta()
    recipe = _recipe_dict(run)
    base = str(recipe.get("model") or meta.get("model") or "unknown")
    method = parity.get("source", {}).get("method") or recipe.get("method") or meta.get("method", "lora")
    gguf = [f for f in files if f.endswith(".gguf")]
    library = "gguf" if gguf else "peft" if "adapter_config.json" in files else "transformers"
    header = [
        "---",
        f"library_name: {library}",
        "tags: [mlxsft, " + ", ".join(t for t in (method, "gguf" if gguf else None) if t) + "]",
    ]
    if "/" in base and not Path(base).exists():
        header.append(f"base_model: {base}")
    lines = [*header, "---", "", f"# {repo.split('/')[1]}", "", f"Fine-tuned from `{base}` with mlxsft ({method}).", ""]
    lines += _section("Data", _data_summary(recipe))
    lines += _section("Hyperparameters", [f"- `{k}`: {v}" for k, v in _hyperparameters(recipe)])
    lines += _section("Evaluation", _eval_lines(run, meta))
    lines += _section("Parity", _parity_lines(parity))
    lines += _section("Usage", _usage(repo, base, files))
    return "\n".join(lines) + "\n"


def _recipe_dict(run: RunDir) -> dict:
    try:
        return yaml.safe_load(run.recipe_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *(body or ["Not recorded."]), ""]


def _data_summary(recipe: dict) -> list[str]:
    data = recipe.get("data")
    if isinstance(data, dict):
        return [f"- `{k}`: {v}" for k, v in data.items() if v not in (None, "", [], {})]
    return [f"- train: {data}"] if data else []


def _hyperparameters(recipe: dict) -> list[tuple[str, object]]:
    out = []
    for section in ("lora", "quantize", "train", "optimizer", "schedule"):
        values = recipe.get(section)
        if isinstance(values, dict):
            out += [(f"{section}.{k}", v) for k, v in values.items() if v is not None and not isinstance(v, dict)]
    return out


def _eval_lines(run: RunDir, meta: dict) -> list[str]:
    """The chosen checkpoint, `mlxsft select`'s verdicts, and `mlxsft eval`'s metrics per checkpoint."""
    lines = []
    if meta.get("chosen_step") is not None:
        lines.append(f"Chosen checkpoint: step {meta['chosen_step']} ({meta.get('chosen_rule', 'rule not recorded')}).")
    elif meta.get("best_step") is not None:
        lines.append(f"Best checkpoint by validation loss: step {meta['best_step']}.")
    selection = _last_selection(run)
    if selection:
        lines += [f"Verdicts: {', '.join(selection.get('verdicts', []))}.", f"Why: {selection.get('reason', '')}", ""]
    path = run.path / "eval" / "results.json"
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entries = doc.get("checkpoints", [])
    names = sorted({k for e in entries for k, v in (e.get("metrics") or {}).items() if isinstance(v, (int, float))})
    if names:
        names = names[:8]
        lines += ["| checkpoint | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for e in entries:
            values = [(e.get("metrics") or {}).get(n) for n in names]
            cells = [f"{v:.4g}" if isinstance(v, (int, float)) else "" for v in values]
            lines.append(f"| {e.get('label', e.get('step'))} | " + " | ".join(cells) + " |")
    return lines


def _last_selection(run: RunDir) -> dict | None:
    """The last SelectionMade event of the run's events.jsonl (written by `mlxsft select`)."""
    if not run.events_file.is_file():
        return None
    found = None
    for line in run.events_file.read_text(encoding="utf-8").splitlines():
        if '"SelectionMade"' in line:
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
    return found


def _parity_lines(parity: dict) -> list[str]:
    if not parity:
        return []
    if parity.get("skipped"):
        return ["Not checked (exported with --no-verify)."]
    keys = (
        "format",
        "dtype",
        "reference_dtype",
        "max_abs_diff",
        "max_rel_diff",
        "greedy_agreement",
        "tolerance",
        "passed",
        "num_tokens",
    )
    return [f"- {k}: {parity[k]}" for k in keys if parity.get(k) is not None]


def _usage(repo: str, base: str, files: list[str]) -> list[str]:
    gguf = [f for f in files if f.endswith(".gguf")]
    if gguf:
        lines = [
            "llama.cpp:",
            "",
            "```sh",
            f"llama-cli -hf {repo} -p 'Hello'",
            f"# or: huggingface-cli download {repo} {gguf[0]} && llama-cli -m {gguf[0]}",
            "```",
        ]
        if "Modelfile" in files:
            lines += [
                "",
                "Ollama:",
                "",
                "```sh",
                f"huggingface-cli download {repo} --local-dir model",
                "ollama create my-model -f model/Modelfile && ollama run my-model",
                "```",
            ]
        return lines
    if "adapter_config.json" in files:
        return [
            "transformers + PEFT:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"base = AutoModelForCausalLM.from_pretrained({base!r})",
            f"model = PeftModel.from_pretrained(base, {repo!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({repo!r})",
            "```",
            "",
            "mlx-lm (via a local PEFT import):",
            "",
            "```sh",
            f"mlxsft import-adapter $(huggingface-cli download {repo}) --base {base} --out run",
            "mlx_lm.generate --model BASE --adapter-path run --prompt 'Hello'",
            "```",
        ]
    return [
        "transformers:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({repo!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({repo!r})",
        "```",
        "",
        "mlx-lm:",
        "",
        "```sh",
        f"mlx_lm.generate --model {repo} --prompt 'Hello'",
        "```",
    ]
