"""A tiny llama that really thinks and calls a tool, trained for a few seconds by the tests.

Its tokenizer has ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>`` as single
vocabulary tokens and a Qwen3-style chat template (a tools section, ``enable_thinking``,
tool calls as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``), so mlx-lm
recognises its think tags and picks its ``json_tools`` parser. The weights are trained
(Adam, about a hundred steps on a handful of conversations rendered by that very template)
until greedy decoding says them back: a ``<think>`` block, then a tool call or an answer.
The runner's split and parser and the kernel's tool loop then run on a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_model import CONFIG, _weights

THINK_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen3's template, cut down: tools in the system turn, earlier thinking dropped,
# enable_thinking=false closes an empty think block in the prompt.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "Call one as <tool_call>\n{\"name\": <name>, \"arguments\": <object>}\n</tool_call>"
    "<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}<|im_start|>user\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{% endif %}{{ content }}"
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if tool_call.function %}{% set tool_call = tool_call.function %}{% endif %}"
    "<tool_call>\n{\"name\": \"{{ tool_call.name }}\", \"arguments\": "
    "{{ tool_call.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{%- endif %}{%- endif %}"
)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
WEATHER_QUESTION = "What is the weather in Paris?"
WEATHER_RESULT = "sunny, 21 C"
WEATHER_ANSWER = "It is sunny in Paris."
WEATHER_THOUGHT = "The user wants the weather. I call the tool."
AFTER_TOOL_THOUGHT = "The tool answered."
GREETING = "Hi"
GREETING_THOUGHT = "A greeting."
GREETING_ANSWER = "Hello! How can I help?"
PARIS_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def _call_text(call: dict) -> str:
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def conversations() -> list[tuple[list[dict], dict, str]]:
    """(messages, template kwargs, what the assistant says next) to train on."""
    user = [{"role": "user", "content": WEATHER_QUESTION}]
    called = user + [{"role": "assistant", "content": "",
                      "tool_calls": [{"type": "function", "function": PARIS_CALL}]}]
    tools = {"tools": [WEATHER_TOOL]}
    think = f"<think>\n{WEATHER_THOUGHT}\n</think>\n\n"
    out = [
        (user, tools, think + _call_text(PARIS_CALL)),
        (called + [{"role": "tool", "content": WEATHER_RESULT}], tools,
         f"<think>\n{AFTER_TOOL_THOUGHT}\n</think>\n\n{WEATHER_ANSWER}"),
        ([{"role": "user", "content": GREETING}], {},
         f"<think>\n{GREETING_THOUGHT}\n</think>\n\n{GREETING_ANSWER}"),
        ([{"role": "user", "content": GREETING}], {"enable_thinking": False}, GREETING_ANSWER),
    ]
    # A tool that failed: the model tries again (what max_tool_rounds is for).
    history = called
    for _ in range(3):
        history = history + [{"role": "tool", "content": "Error: RuntimeError: the weather "
                                                         "service is down"}]
        out.append((history, tools, think + _call_text(PARIS_CALL)))
        history = history + called[-1:]
    return out


def _build_tokenizer(path: Path, texts: list[str]) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts * 4, trainer=trainer)
    # Not special (as in Qwen3): the detokenizer gives their text, the runner strips them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
              "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "model_max_length": 1024,
              "clean_up_tokenization_spaces": False, "add_bos_token": False,
              "chat_template": CHAT_TEMPLATE}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok.get_vocab_size()


def build_tiny_thinker(path: Path, *, steps: int = 120) -> Path:
    """:func:`make_tiny_thinker` in a fresh process with the OpenBLAS the runner preloads:
    training on MLX's bundled reference BLAS takes minutes, with OpenBLAS seconds."""
    import os
    import subprocess
    import sys

    from mlx_notebook.weight_format import find_openblas

    env = dict(os.environ)
    library = find_openblas()
    if library:
        env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    subprocess.run([sys.executable, "-m", "tests.tiny_thinker", str(path), str(steps)], env=env,
                   cwd=Path(__file__).resolve().parent.parent, check=True, timeout=600)
    return Path(path)


def make_tiny_thinker(path: Path, *, steps: int = 120, seed: int = 0) -> Path:
    """Write the trained model into ``path`` and return it (seconds on a CPU with OpenBLAS: see build_tiny_thinker)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.models import llama
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Train the BPE on the rendered conversations themselves: short sequences.
    from jinja2 import Environment

    env = Environment()
    env.filters["tojson"] = lambda v: json.dumps(v)
    template = env.from_string(CHAT_TEMPLATE)
    convs = conversations()
    raw = [template.render(messages=m, add_generation_prompt=True, **kw) + a + "<|im_end|>"
           for m, kw, a in convs]
    vocab = _build_tokenizer(path, raw)
    ids = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    config = dict(CONFIG, vocab_size=vocab, hidden_size=96, intermediate_size=192,
                  max_position_embeddings=1024, bos_token_id=ids["<|im_start|>"],
                  eos_token_id=ids["<|im_end|>"], num_attention_heads=4, head_dim=24,
                  num_key_value_heads=2)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = load_tokenizer(path)
    rows, masks = [], []
    for messages, kwargs, answer in convs:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=True, **kwargs)
        p = tokenizer.encode(prompt, add_special_tokens=False)
        a = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
        rows.append(p + a)
        masks.append([0] * len(p) + [1] * len(a))
    width = max(map(len, rows))
    x = np.zeros((len(rows), width), np.int32)
    m = np.zeros((len(rows), width), np.float32)
    for i, (r, k) in enumerate(zip(rows, masks, strict=True)):
        x[i, :len(r)], m[i, :len(k)] = r, k
    inputs, targets, weights = mx.array(x[:, :-1]), mx.array(x[:, 1:]), mx.array(m[:, 1:])

    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.update(nn.utils.tree_unflatten(  # seeded start, as the tiny model's
        [(k, mx.array(v) * 0.2) for k, v in _weights(config, seed, np.ones(vocab)).items()]))
    opt = optim.Adam(learning_rate=3e-3)

    def loss_fn(model: nn.Module) -> mx.array:
        ce = nn.losses.cross_entropy(model(inputs), targets)
        return (ce * weights).sum() / weights.sum()

    step = nn.value_and_grad(model, loss_fn)
    for _ in range(steps):
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
    flat = dict(nn.utils.tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), flat, metadata={"format": "mlx"})
    (path / "train_loss.txt").write_text(f"{float(loss):.4f}\n")
    return path


if __name__ == "__main__":  # python -m tests.tiny_thinker PATH [STEPS]: what build_tiny_thinker runs
    import sys

    make_tiny_thinker(Path(sys.argv[1]), steps=int(sys.argv[2]) if len(sys.argv) > 2 else 120)
