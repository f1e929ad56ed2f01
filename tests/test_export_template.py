"""Every export carries the chat template the run trained with, unchanged."""

import gguf
from transformers import AutoTokenizer

from mlxsft.export.gguf import export_gguf
from mlxsft.export.merged import export_hf
from mlxsft.export.peft import export_peft
from mlxsft.rundir import RunDir

from .export_fixtures import make_run

# Not the base's own template: the export must take the run's, not re-copy the base's.
TRAINED_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{# trained with mlxsft #}"
)


def test_peft_hf_and_gguf_exports_carry_the_trained_template(tiny_llama, tmp_path):
    run = make_run(tmp_path / "run", tiny_llama, steps=(1,))
    RunDir(run).save_chat_template(TRAINED_TEMPLATE)
    assert (tiny_llama / "chat_template.jinja").read_text() != TRAINED_TEMPLATE

    peft_dir = export_peft(run, tmp_path / "peft", verify=False)
    assert AutoTokenizer.from_pretrained(str(peft_dir)).chat_template == TRAINED_TEMPLATE

    hf_dir = export_hf(run, tmp_path / "hf", verify=False)
    assert (hf_dir / "chat_template.jinja").read_text() == TRAINED_TEMPLATE
    assert AutoTokenizer.from_pretrained(str(hf_dir)).chat_template == TRAINED_TEMPLATE

    path = export_gguf(run, tmp_path / "model.gguf", dtype="float32", verify=False)
    reader = gguf.GGUFReader(str(path))
    f = reader.fields["tokenizer.chat_template"]
    assert bytes(f.parts[f.data[0]]).decode() == TRAINED_TEMPLATE
