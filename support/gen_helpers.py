"""Tiny decoder bases for the generation tests: random weights from a config, a tokenizer
trained in-process (no download), and a ChatML chat template like SmolLM2's."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Hello world, how are you today? I am fine, thank you.",
    "LoRA adapters are low rank updates; many adapters share one frozen base model.",
    "0 1 2 3 4 5 6 7 8 9 ten eleven twelve. Stop here. END of line, new line\nnext.",
]


@cache
def tiny_tokenizer() -> Any:
    """A byte-level BPE of about 300 tokens with <|endoftext|>, <|im_start|> and <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def write_tiny_causal_lm(
    folder: Path,
    model_type: str = "llama",
    seed: int = 0,
    chat_template: bool = True,
    context: int = 256,
) -> Path:
    """A random tiny causal LM folder as save_pretrained writes it (llama, qwen2, mistral, gpt2)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if model_type == "gpt2":
        config = AutoConfig.for_model(
            "gpt2", vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=context,
            eos_token_id=eos, bos_token_id=eos,
        )  # fmt: skip
    else:
        config = AutoConfig.for_model(
            model_type, vocab_size=vocab, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=context, eos_token_id=eos, tie_word_embeddings=True,
        )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init's, so logits are far from ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    saved = tokenizer
    if not chat_template:
        saved = type(tokenizer)(
            tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>"
        )
        saved.chat_template = None
    saved.save_pretrained(folder)
    return folder


def write_tuned_adapter(
    base: Path,
    out: Path,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    b_std: float = 0.5,
) -> Path:
    """A PEFT adapter (r 4, alpha 8) saved by PEFT, whose B is drawn instead of PEFT's zeros so
    that it changes the base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    tuned.save_pretrained(out)
    return out


# The decoder layouts every generation test runs on.
LAYOUTS = ("llama", "qwen2", "gpt2")


def reference(base_dir: Path, ids: list[int], adapter_dir: Path | None, new: int) -> list[int]:
    """Greedy tokens of transformers (+ PEFT) for `ids`: the reference our engine must equal."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False
    )
    return out[0, len(ids) :].tolist()
