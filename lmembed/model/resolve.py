"""The one rule that decides the spec a command uses (``resolve_spec``).

Defaults < a packaged model's own defaults < the spec saved with the adapter (or a
merged export) < the options the user gave explicitly. Apart from ``spec`` because it
reads ``loading``'s packaged models, which in turn use the spec's types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmembed.model.loading import packaged_defaults
from lmembed.model.spec import SPEC_FILE, EmbeddingSpec
from lmembed.options import build


def saved_spec_folder(model: str | None, adapter: str | Path | None) -> Path | None:
    """Where a saved spec lives: the adapter, or a model folder with ``lmembed.json``."""
    if adapter is not None:
        return Path(adapter)
    if model and (Path(model) / SPEC_FILE).is_file():
        return Path(model)
    return None


def resolve_spec(options: dict[str, Any] | None = None, **explicit: Any) -> EmbeddingSpec:
    """The one rule: defaults < packaged model defaults < saved spec < explicit options.

    ``options``/``explicit`` hold only what the user chose (``None`` means "not given").
    """
    given = {k: v for k, v in {**(options or {}), **explicit}.items() if v is not None}
    folder = saved_spec_folder(given.get("model"), given.get("adapter"))
    saved = EmbeddingSpec.load(folder).to_dict() if folder is not None else {}
    saved.pop("adapter", None)
    model = given.get("model") or saved.get("model")
    if model is None:
        raise ValueError("give a model, or an adapter folder that records one")
    packaged = packaged_defaults(model)
    defaults = {"pooling": packaged.pooling, "max_length": packaged.max_length} if packaged else {}
    values = {**defaults, **saved, **given, "model": model}
    if values.get("adapter") is not None:
        values["adapter"] = str(values["adapter"])
    return build(EmbeddingSpec, values, source="embedding options")
