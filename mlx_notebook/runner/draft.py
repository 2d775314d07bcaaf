"""Load a draft model for speculative decoding, and refuse one that cannot draft.

The draft goes through the same :func:`~runner.models.load_model` as the model
(``demo``, a folder, a .gguf file, a hub id). Its guesses are token ids that the
model checks, so both must share one tokenizer: ids that mean other text would
be rejected every time (or worse, accepted by chance). Both caches are trimmed
after every round, so both models need trimmable caches (a plain KV cache; not
a rotating or state-space one).
"""

from __future__ import annotations

from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

from ..model_files import ModelLoadError
from .models import LoadedModel, load_model
from .progress import Progress

__all__ = ["check_draft", "load_draft"]

DRAFT_TOKENIZER_DIFFERS = ("draft model {draft!r} has another tokenizer than {model!r} "
                           "({draft_size} vs {model_size} tokens{detail}): a draft model must "
                           "share the model's vocabulary (pick one of the same family)")
CACHE_NOT_TRIMMABLE = ("{which} {name!r} has a KV cache that cannot be rewound, which speculative "
                       "decoding needs: load it without a draft model")


def load_draft(spec: str, model: LoadedModel, *, progress: Progress | None = None,
               dtype: str | None = None) -> LoadedModel:
    """Load ``spec`` as a draft for ``model``; a :class:`ModelLoadError` if it cannot be one."""
    try:
        draft = load_model(spec, progress=progress, dtype=dtype)
    except ModelLoadError as exc:  # say which of the two models it was
        raise ModelLoadError(f"draft model {spec!r}: {exc}") from exc
    check_draft(model, draft)
    return draft


def check_draft(model: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft with another vocabulary, or either model with a cache we cannot trim."""
    ours, theirs = model.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if ours != theirs:
        differ = next((t for t, i in theirs.items() if ours.get(t) != i), None)
        detail = f"; e.g. {differ!r}" if differ is not None and len(ours) == len(theirs) else ""
        raise ModelLoadError(DRAFT_TOKENIZER_DIFFERS.format(
            draft=draft.name, model=model.name, draft_size=len(theirs), model_size=len(ours),
            detail=detail))
    for which, loaded in (("model", model), ("draft model", draft)):
        if not can_trim_prompt_cache(make_prompt_cache(loaded.model)):
            raise ModelLoadError(CACHE_NOT_TRIMMABLE.format(which=which, name=loaded.name))
