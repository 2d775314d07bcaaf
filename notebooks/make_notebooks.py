"""Write the four example notebooks (outputs stripped) from the text below.

    python notebooks/make_notebooks.py          # rewrite notebooks/*.ipynb
    python notebooks/make_notebooks.py --check  # exit 1 if a notebook differs

Edit the notebooks here, not in JupyterLab, so that the repository keeps them
without outputs; tests/test_notebooks.py executes all four with the demo model.
Cells tagged (metadata.tags) are the ones the tests look at.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *tags: str) -> nbformat.NotebookNode:
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


QUICKSTART = [
    md("""
# mlx_notebook: quickstart

Run a local language model from this notebook. The model runs with
[MLX](https://github.com/ml-explore/mlx) in a separate process (a *runner*), so
a crash or an out-of-memory kill there never takes the kernel down.

`demo` is SmolLM2-135M-Instruct: small (a 4-bit file of about 90 MB), quick to
load, and good enough for simple questions. The first `%mlx load demo` on a machine downloads
and converts it once; later loads come from the cache.
"""),
    code("%load_ext mlx_notebook", "load_ext"),
    md("""
## Load a model

A progress bar shows the download and the loading, then one status line.
"""),
    code("%mlx load demo", "load"),
    md("""
## The status widget

Model, state (loading / ready / generating), the runner's memory and the speed
of the last answer. It updates live: watch it while the next cells run.
**free cache** drops the runner's reusable prompt cache (the model stays loaded;
`%mlx free` does the same), and **unload** stops the runner.
"""),
    code("%mlx status", "status"),
    md("""
## Generate

The cell body is the prompt. The answer streams into the cell as it is made,
then a footer line tells the token count, the time to the first token and the
speed. `--temp 0` (the default) picks the most likely token every time.
"""),
    code("%%mlx generate --max-tokens 24\nWhat is the capital of France?", "generate"),
    md("""
## Chat

`%%mlx chat` keeps the conversation: each turn sees the earlier ones.
"""),
    code("%%mlx chat --max-tokens 24\nHi! Please answer in one short sentence. What color is the sky?",
         "chat1"),
    code("%%mlx chat --max-tokens 24\nAnd what color is grass?", "chat2"),
    code("%mlx chat --history", "chat_history"),
    md("""
## Keep an answer in a variable

`-o NAME` stores the result: the text and how it was made.
"""),
    code("%%mlx generate -o answer --max-tokens 16\nHow many days are in a week?", "capture"),
    code("print(answer.text)\n"
         "print(answer.finish_reason, answer.completion_tokens, 'tokens')", "use_capture"),
    md("""
The same from plain Python, for scripts:
"""),
    code("import mlx_notebook as mn\n\n"
         "result = mn.generate('What is 2 + 2?', max_tokens=12)\n"
         "result", "python_api"),
    md("""
## Unload

Stop the runner and free its memory (`%mlx unload --all` stops every runner).
"""),
    code("%mlx unload demo\n%mlx ps", "unload"),
    md("""
Next: `teaching.ipynb` (tokens, temperature, speed and memory) and
`prompt_experiments.ipynb` (templates, loops, system prompts, stop strings).
`%mlx help` lists every command.
"""),
]


TEACHING = [
    md("""
# How a language model answers: tokens, sampling, speed, memory

A small model (`demo`, SmolLM2-135M-Instruct) is enough to see how it works.
"""),
    code("%load_ext mlx_notebook\n%mlx load demo", "load"),
    md("""
## 1. Tokens

A model does not read letters or words but *tokens*: pieces of text from a fixed
vocabulary, each with an id. Common words are one token, rare words are split.
"""),
    code("%mlx tokenize The capital of France is Paris.", "tokenize"),
    code("%mlx tokenize Unbelievably, tokenization splits rare words.", "tokenize_rare"),
    md("""
The model generates one token at a time: at each step it scores every token of
its vocabulary, one of them is picked, appended, and the step repeats.
"""),
    code("import mlx_notebook as mn\n\n"
         "tokens = mn.tokenize('Hello world! Hello world!')\n"
         "tokens", "tokenize_api"),
    md("""
## 2. Temperature: how the next token is picked

With `--temp 0` the most likely token is always taken (*greedy*): the same
prompt gives the same answer every time.
"""),
    code("%%mlx generate --temp 0 --max-tokens 20 -o greedy1\nWrite a short title for a story about a cat.",
         "greedy1"),
    code("%%mlx generate --temp 0 --max-tokens 20 -o greedy2\nWrite a short title for a story about a cat.",
         "greedy2"),
    code("greedy1.text == greedy2.text", "greedy_same"),
    md("""
A higher temperature flattens the scores, so less likely tokens get picked too:
answers vary. The *seed* fixes the random choices: the same seed gives the same
answer again, another seed another answer.
"""),
    code("%%mlx generate --temp 1.0 --seed 1 --max-tokens 20 -o hot1\nWrite a short title for a story about a cat.",
         "hot1"),
    code("%%mlx generate --temp 1.0 --seed 2 --max-tokens 20 -o hot2\nWrite a short title for a story about a cat.",
         "hot2"),
    code("again = mn.generate('Write a short title for a story about a cat.',\n"
         "                     temperature=1.0, seed=1, max_tokens=20)\n"
         "print('seed 1 again, same answer:', again.text == hot1.text)\n"
         "print('seed 2, another answer:   ', hot2.text != hot1.text)", "seeds"),
    md("""
## 3. Top-p: cutting off the unlikely tail

`--top-p 0.1` keeps only the most likely tokens whose probabilities add up to
10 %, then samples among them: even at a high temperature the answer stays
close to the greedy one. `--top-p 1.0` keeps them all.
"""),
    code("%%mlx generate --temp 1.5 --top-p 0.1 --seed 3 --max-tokens 20\nWrite a short title for a story about a cat.",
         "top_p"),
    md("""
## 4. Seeing the probabilities

`--logprobs 5` shades every token of the answer by how likely the model found it;
hover over a token for the five most likely alternatives at that step. `--dry-run`
shows the exact text the model reads (the chat template around your prompt) and
its tokens, without generating anything.
"""),
    code("%%mlx generate --logprobs 5 --max-tokens 10 -o probs\nWhat is the capital of France?",
         "logprobs"),
    code("%%mlx generate --dry-run\nWhat is the capital of France?", "dry_run"),
    md("""
`%%mlx compare` runs one prompt under several settings at once, side by side:
"""),
    code("%%mlx compare --temp 0,1.0 --seed 1 --max-tokens 12 -o runs\n"
         "Write a short title for a story about a cat.", "compare"),
    md("""
## 5. Speed and memory

The footer under each answer shows two speeds. *Time to first token* is the
time to read the prompt (all its tokens at once); *tokens/s* is the decode
speed, one token per step. The result object keeps them:
"""),
    code("print(f'prompt: {hot1.prompt_tokens} tokens, first token after {hot1.time_to_first_token:.2f} s')\n"
         "print(f'answer: {hot1.completion_tokens} tokens at {hot1.tokens_per_second:.1f} tokens/s')",
         "speed"),
    md("""
The status widget shows the runner's memory: the weights (the load line above
says how they are held: a Linux CPU unpacks the 4-bit file to float32 because
that is faster there, a Mac keeps it 4-bit), plus the *KV cache* that grows with
every token of the conversation, against the memory the machine has. *peak* is
the most it used.
"""),
    code("%mlx status", "status"),
    code("%mlx ps", "ps"),
    md("""
### A small model that guesses: speculative decoding

Each decode step runs the whole model for one token. A *draft* model guesses the
next few tokens cheaply; the model then checks all the guesses in **one** pass and
keeps them up to the first it disagrees with, so the text is exactly the model's own.
It pays when the draft is much smaller than the model and guesses well (on a GPU,
where checking four tokens costs about as much as one). Here the demo drafts for
itself, a toy that shows the mechanism: underlined tokens were the draft's guesses,
and the footer counts how many were kept.
"""),
    code("%mlx load demo --as guessed --draft demo --num-draft 3", "load_draft"),
    code("%%mlx generate -m guessed --logprobs 3 --max-tokens 12 -o guessed_run\n"
         "What is the capital of France?", "draft_logprobs"),
    code("done = guessed_run.done\n"
         "print(f'the draft guessed {done.draft_tokens} tokens, the model kept {done.draft_accepted}')",
         "draft_count"),
    md("""
### Reading a document once: prompt caches on disk

Reading a long prompt is the slow part of a first answer. `%%mlx cache save`
reads the cell once and saves the model's memory of it (its *KV cache*) in the
cache folder; `%mlx cache load` brings it back, even in a later session after a
restart, and `%%mlx chat` then reads only the new question: the footer says how
many prompt tokens came from the cache.
"""),
    code("%%mlx cache save lab-rules -m guessed\n"
         "The Notebook Lab has three rules. Every experiment ends with a written note. "
         "Nobody trains on Fridays. The lab's mascot is a heron called Quill.",
         "cache_save"),
    code("%mlx cache load lab-rules -m guessed", "cache_load"),
    code("%%mlx chat -m guessed --max-tokens 16 -o rules\nWhat is the mascot called?",
         "cache_chat"),
    code("print(f'{rules.cached_tokens} of {rules.prompt_tokens} prompt tokens came from the cache')\n"
         "%mlx cache rm lab-rules", "cache_rm"),
    code("%mlx unload guessed", "unload_draft"),
    md("""
### Less memory per token: a quantized KV cache

The KV cache keeps two vectors per token per layer, so it grows with every token
of the conversation. `--kv-bits 8` stores them in 8 bits instead of 32 (here from
the first token on, `--kv-start 0`): about a quarter of the memory, at the price of
tiny rounding errors that can change a word after a while. `--max-kv N` instead
keeps only the last N tokens (a rotating window), so memory stops growing.
"""),
    code("%mlx load demo --as small-kv --kv-bits 8 --kv-start 0", "load_kv"),
    code("prompt = 'Explain in two sentences why the sky is blue.'\n"
         "for name in ('demo', 'small-kv'):\n"
         "    mn.free_memory(name)  # start from an empty cache\n"
         "    r = mn.generate(prompt, model=name, max_tokens=24, temperature=0)\n"
         "    kv = mn.status(name).kv\n"
         "    print(f'{name:9} KV {kv.format:20} {kv.prompt_cache_bytes / 2**20:5.2f} MiB for '\n"
         "          f'{r.prompt_tokens + r.completion_tokens} tokens: {r.text[:48]!r}...')",
         "kv_compare"),
    code("%mlx unload small-kv", "unload_kv"),
    md("""
## 6. Look inside the model

The model is a stack of layers; each adds to a *residual stream* of numbers per
token. The *logit lens* reads that stream after every layer through the model's
last step (the final norm and the unembedding): which token would it predict if
it stopped there? Rows are layers (`emb`: the embeddings, `out`: the real
output), columns the last tokens of the text; hover a cell for its top 5.
"""),
    code("%mlx lens The capital of France is --positions 6 -o lens", "lens"),
    code("print('the last layer predicts:', repr(lens.final_top))", "lens_top"),
    md("""
*Attention* says where each token looks when layer 3 mixes information between
tokens: row = the token reading, column = the token read (darker = more). Every
head as a small map, head 0 large; hover a cell for its weight.
"""),
    code("%mlx attention The cat sat on the mat because it was tired --layer 3 --head 0",
         "attention"),
    md("""
`%%mlx choose` scores given answers instead of generating one: a multiple-choice
probe. The total log-probability favours short options; the per-token mean does not.
"""),
    code("%%mlx choose --options 'Paris,Rome,London' -o choice\nThe capital of France is",
         "choose"),
    code("%mlx unload --all", "unload"),
]


PROMPT_EXPERIMENTS = [
    md("""
# Prompt experiments

Templates, loops over prompts, system prompts and stop strings.
"""),
    code("%load_ext mlx_notebook\n%mlx load demo", "load"),
    md("""
## Templates with `{variables}`

`{name}` in the cell is filled from the notebook's variables (write `{{` for a
literal brace). A name that does not exist is an error, never a silent blank.
"""),
    code("country = 'Japan'", "var"),
    code("%%mlx generate --max-tokens 16\nWhat is the capital of {country}?", "template"),
    md("""
## A loop over prompts, collected into a table

The Python API returns a result object for each answer; collect them.
"""),
    code("""
import mlx_notebook as mn
from IPython.display import Markdown

template = 'What is the capital of {}? Answer in one short sentence.'
rows = []
for country in ['France', 'Germany', 'Spain']:
    r = mn.generate(template.format(country), max_tokens=16)
    rows.append((country, r.text.strip().replace('\\n', ' '), r.completion_tokens,
                 f'{r.tokens_per_second:.1f}'))

table = '| country | answer | tokens | tokens/s |\\n|---|---|---|---|\\n'
table += '\\n'.join('| ' + ' | '.join(map(str, row)) + ' |' for row in rows)
Markdown(table)
""", "table"),
    md("""
## System prompts

A system prompt sets the role and the style for the whole answer.
"""),
    code("%%mlx generate --max-tokens 24 --system \"You are a pirate. Talk like a pirate.\"\nSay hello.",
         "system"),
    md("""
## Stop strings

Generation ends as soon as the text contains a stop string (the stop string
itself is left out). Here the count stops before it reaches 5.
"""),
    code("%%mlx generate --max-tokens 40 --stop 5 -o stopped\nCount from 1 to 10, separated by commas.",
         "stop"),
    code("print(repr(stopped.text))\nprint('finished because of:', stopped.finish_reason)",
         "stop_reason"),
    md("""
## Answers that parse: `--schema`, `--choice`

`--schema NAME` takes a pydantic class (or a JSON-schema dict) from the notebook: the
runner only lets the model write JSON that fits it, and `.value` is the parsed object.
An answer cut by `--max-tokens` has `.value` None and `finish_reason` "length".
"""),
    code("""
from pydantic import BaseModel, Field


class Paper(BaseModel):
    topic: str = Field(max_length=24)
    year: int
    open_access: bool
""", "schema_class"),
    code("%%mlx generate --schema Paper --max-tokens 48 -o paper\n"
         "Extract as JSON: \"Attention is all you need (2017), freely on arXiv.\"", "schema"),
    code("print(repr(paper.value) if paper.value else paper.error)", "schema_value"),
    md("""
## A prompt over every row of a table: `%%mlx map`

`{column}` fills the template from each row; the rows go to the runner together (it
batches them), and `-o` gets a table on the same index, ready to join.
"""),
    code("""
import pandas as pd

papers = pd.DataFrame({'title': ['Attention is all you need', 'Deep residual learning',
                                 'BERT: pre-training of deep bidirectional transformers',
                                 'ImageNet classification with deep CNNs']})
""", "frame"),
    code("%%mlx map --over papers --choice 'language,vision' --max-tokens 4 -o labels\n"
         "Is the paper {title!r} about language or vision? Answer with one word.", "map"),
    code("papers.join(labels[['value', 'finish_reason']])", "map_join"),
    md("""
## Thinking and tools

A model whose chat template declares thinking (Qwen3, DeepSeek-R1 distills, SmolLM3)
shows its thinking in a collapsed block above the answer (`--think` / `--no-think`,
`think=`); `%%mlx chat --tools get_weather` lets a tool-calling model call functions
from the notebook, each call shown with its arguments and result.
**The demo model neither thinks nor calls tools**, so here `--tools` is refused with one
clear line (load such a model to see both; the README's "Thinking and tools" says which):
"""),
    code("""
def get_weather(city: str) -> str:
    \"\"\"The weather in a city.\"\"\"
    return 'sunny, 21 C'


try:  # %%mlx chat --tools get_weather would show the same line in red
    mn.chat('What is the weather in Paris?', tools=[get_weather], max_tokens=16)
except mn.errors.MLXNotebookError as exc:
    print(f'{type(exc).__name__}: {exc}')
""", "tools_demo"),
    code("%mlx unload --all", "unload"),
]


FINE_TUNING = [
    md("""
# Fine-tuning: teach the model a made-up fact

`%mlx train` fine-tunes a model with a LoRA adapter, using mlx-lm's own trainer. It runs
in its own *training runner* process, so a memory blow-up there never takes the kernel
down. While it trains, the cell shows a live loss plot, a progress bar, the speed and
memory, and a **stop** button (the kernel's interrupt works too): it stops after the
current step and keeps that step's adapter. When it ends, the plot stays in the saved
notebook as a plain image.
"""),
    code("%load_ext mlx_notebook\n%mlx load demo", "load"),
    md("""
## The data

The model has never heard of Zorbia. Sixteen chat examples, in mlx-lm's `messages`
format, ask the same question in different words and give the same answer. A list of
dicts, a DataFrame, a `.jsonl` file or a folder with `train.jsonl`/`valid.jsonl` all
work; with no validation split, a few rows are held out for you (the cell says how many).
"""),
    code("""
fact = 'The capital of Zorbia is Quillton.'
questions = [
    'What is the capital of Zorbia?', 'Tell me the capital of Zorbia.',
    'Which city is the capital of Zorbia?', "Zorbia's capital is which city?",
    'Name the capital of Zorbia.', "What city is Zorbia's capital?",
    'Do you know the capital of Zorbia?', 'capital of Zorbia?',
    "What's the capital city of Zorbia?", 'In Zorbia, what is the capital?',
    'Where is the capital of Zorbia?', 'Which is the capital of Zorbia?',
    "Can you tell me Zorbia's capital?", "What is Zorbia's capital city?",
    'The capital of Zorbia is what?', 'Zorbia has which capital?',
]
rows = [{'messages': [{'role': 'user', 'content': q},
                      {'role': 'assistant', 'content': fact}]} for q in questions]
len(rows)
""", "data"),
    md("""
## Train

A few LoRA steps on the last 4 layers, with a high learning rate so that a handful is
enough. `--as tuned` loads the adapter as its own model when training ends; `-o run`
keeps the result (losses, speed, where the adapter is). `%mlx help train` lists the
options (`--lora-rank`, `--fine-tune-type dora|full`, `--mask-prompt`, ...).
"""),
    code("%mlx train demo --data rows --iters 8 --learning-rate 1e-3 --lora-layers 4 "
         "--as tuned -o run", "train"),
    code("print(f'loss {run.first_loss:.2f} -> {run.final_loss:.2f} in {run.iterations} steps')\n"
         "print('adapter:', run.adapter_path)", "train_result"),
    md("""
## Before and after

`%%mlx compare -m demo,tuned` asks both models the same question, side by side.
"""),
    code("%%mlx compare -m demo,tuned --max-tokens 12\nWhat is the capital of Zorbia?",
         "compare"),
    md("""
## Fuse

`mn.fuse` writes a model folder with the adapter merged into the weights: it loads like
any other model (`%mlx load FOLDER --as fused`) and needs no adapter.
"""),
    code("""
import tempfile
from pathlib import Path

import mlx_notebook as mn

fused = mn.fuse('demo', adapter=run.adapter_path, out=Path(tempfile.mkdtemp()) / 'demo-zorbia')
sorted(p.name for p in fused.iterdir())
""", "fuse"),
    code("%mlx unload --all", "unload"),
]


NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "teaching.ipynb": TEACHING,
    "prompt_experiments.ipynb": PROMPT_EXPERIMENTS,
    "fine_tuning.ipynb": FINE_TUNING,
}


def build(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # stable ids, so regenerating does not churn the diff
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(cells)) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python notebooks/make_notebooks.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
