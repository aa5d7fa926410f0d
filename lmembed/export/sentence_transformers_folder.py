"""The sentence-transformers folder: ``SentenceTransformer(path)`` loads it with no lmembed.

LoRA is merged into the weights. lmembed's embedding recipe is carried by the tokenizer
and sentence-transformers' own config: the tokenizer's post-processor appends EOS (and
truncation reserves its slot, as ``Embedder.tokenize`` does), the part of the prompt
template before ``{s}`` becomes the sentence-transformers prompt, and the part after
``{s}`` is inserted by a tokenizer normalizer (prompts in sentence-transformers are
prefixes only). Pooling is ``lasttoken`` or ``mean``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from lmembed.backends.errors import ExportError
from lmembed.io import atomic_directory, atomic_write_json
from lmembed.model.embedder import Embedder
from lmembed.model.spec import EmbeddingSpec

logger = logging.getLogger("lmembed")

ST_POOLING = {"last": "lasttoken", "mean": "mean"}
ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
# The path sentence-transformers 5 and 6 both import (6 also has base.modules.normalize).
ST_NORMALIZE = "sentence_transformers.sentence_transformer.modules.normalize.Normalize"
ST_POOLING_MODULE = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
# sentence-transformers' prompt names for encode_query / encode_document.
ST_PROMPT_NAMES = ("query", "document")


def split_prompt(template: str | None) -> tuple[str, str]:
    """``"query: {s} is: "`` -> ``("query: ", " is: ")``; one ``{s}`` only."""
    if template is None:
        return "", ""
    parts = template.split("{s}")
    if len(parts) != 2:
        raise ExportError(
            f"prompt template {template!r} uses {{s}} {len(parts) - 1} times; the "
            "sentence-transformers export can represent one {s} (a prefix and a suffix)"
        )
    return parts[0], parts[1]


def st_prompts(spec: EmbeddingSpec) -> tuple[dict[str, str], str | None, str]:
    """sentence-transformers prompts (``query``/``document`` prefixes), default name, suffix.

    Prompts there are prefixes; lmembed's suffix (``{s} is: ``) becomes a tokenizer
    normalizer, which cannot differ between roles.
    """
    parts = {role: split_prompt(spec.template(role)) for role in ST_PROMPT_NAMES}
    symmetric = split_prompt(spec.prompt)
    suffixes = {suffix for _, suffix in parts.values()}
    if len(suffixes) > 1:
        raise ExportError(
            "the query and document prompts end differently after {s}; the "
            "sentence-transformers export can only carry one suffix for both"
        )
    prompts = {role: prefix for role, (prefix, _) in parts.items()}
    default = next((name for name, p in prompts.items() if p == symmetric[0]), None)
    if symmetric[0] and default is None:
        prompts["symmetric"], default = symmetric[0], "symmetric"
    return prompts, default if symmetric[0] else None, suffixes.pop()


def write_sentence_transformers(
    embedder: Embedder,
    output: Path,
    normalize: bool,
    finish: Callable[[Path, EmbeddingSpec], None] | None = None,
) -> Path:
    """Merged weights, the rewritten tokenizer and sentence-transformers' configs;
    ``finish(folder, spec)`` adds files (the model card) before the folder is committed.

    No ``lmembed.json`` here: ``Embedder`` would apply the prompt suffix and EOS a
    second time on top of the tokenizer's. Export ``merged`` for lmembed itself.
    """
    spec = embedder.spec
    prompts, default, suffix = st_prompts(spec)
    with atomic_directory(output) as tmp:
        embedder.model.save_pretrained(tmp)
        embedder.tokenizer.save_pretrained(tmp)
        _rewrite_tokenizer(tmp, embedder, suffix)
        _write_st_config(tmp, embedder.dimension, spec, prompts, default, normalize)
        if finish is not None:
            finish(tmp, spec)
    return output


def _rewrite_tokenizer(folder: Path, embedder: Embedder, suffix: str) -> None:
    """Make the saved fast tokenizer reproduce ``Embedder.tokenize`` on its own.

    * EOS: the post-processor adds it after the tokenizer's own special tokens (BOS);
      tokenizers count post-processor tokens when truncating, so EOS survives
      truncation at max_length exactly as in ``Embedder.tokenize``.
    * suffix: a ``Replace`` normalizer matching the end of the text (``\\z``) runs
      before the original normalizers, so they see exactly ``text + suffix``.
    * ``tokenizer_class`` becomes the generic fast tokenizer: model-specific classes
      (e.g. ``GemmaTokenizer``) rebuild their normalizer and post-processor on load.
    """
    from tokenizers import Regex, Tokenizer, normalizers

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            f"{embedder.spec.model}: the tokenizer saved no tokenizer.json (not a fast "
            "tokenizer), so EOS and prompt handling cannot be stored for sentence-transformers"
        )
    backend = Tokenizer.from_file(str(path))
    if suffix:
        _warn_added_tokens(embedder, suffix)
        steps = [normalizers.Replace(Regex(r"\z"), suffix)]
        if backend.normalizer is not None:
            steps.append(backend.normalizer)
        backend.normalizer = normalizers.Sequence(steps)
    if embedder.eos_id is not None:
        backend.post_processor = _post_processor_with_eos(embedder, backend.post_processor)
    backend.save(str(path))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(
        tokenizer_class="PreTrainedTokenizerFast",
        padding_side=embedder.tokenizer.padding_side,
        model_max_length=embedder.spec.max_length,
        model_input_names=["input_ids", "attention_mask"],
    )
    atomic_write_json(config_path, config)


def _warn_added_tokens(embedder: Embedder, suffix: str) -> None:
    """Normalizers run on each piece between added tokens, so each piece gets the suffix."""
    added = [t.content for t in embedder.tokenizer.added_tokens_decoder.values() if not t.special]
    examples = sorted(added, key=lambda t: not t.isspace())[:4]
    logger.warning(
        "prompt suffix %r: the sentence-transformers export appends it to each piece of text "
        "between added tokens, so texts containing one of this tokenizer's %d added tokens "
        "(%s) or a special token written out (e.g. %r) embed differently from Embedder.encode",
        suffix,
        len(added),
        ", ".join(repr(t) for t in examples) or "none",
        embedder.tokenizer.eos_token,
    )


def _post_processor_with_eos(embedder: Embedder, existing):
    """The tokenizer's post-processing, then EOS.

    The special tokens the tokenizer adds today (BOS) are found by probing ``"a"``
    with and without them, and rebuilt in one ``TemplateProcessing`` ending in EOS:
    chaining two templates in a ``processors.Sequence`` misplaces EOS after BOS. A
    post-processor that adds no tokens (``ByteLevel`` offset trimming) is kept and
    the EOS template runs after it.
    """
    from tokenizers import processors

    tokenizer = embedder.tokenizer
    full = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(full)) if full[i : i + len(plain)] == plain]
    if not starts:
        raise ExportError(f"{embedder.spec.model}: cannot locate the text in the tokenizer output")
    before, after = full[: starts[0]], full[starts[0] + len(plain) :]
    template = _template([*before, -1, *after, embedder.eos_id], tokenizer)
    if existing is None or isinstance(existing, processors.TemplateProcessing):
        return template
    if not before and not after:
        return processors.Sequence([existing, template])
    raise ExportError(
        f"{embedder.spec.model}: tokenizer post-processor {type(existing).__name__} adds "
        "special tokens in a way this export cannot rebuild with EOS appended"
    )


def _template(layout: list[int], tokenizer):
    """``TemplateProcessing`` of token ids around the text (``-1`` marks the text)."""
    from tokenizers import processors

    specials = {i: tokenizer.convert_ids_to_tokens(i) for i in layout if i != -1}

    def sequence(type_id: int) -> list[str]:
        text = f"${'AB'[type_id]}:{type_id}"
        return [text if i == -1 else f"{specials[i]}:{type_id}" for i in layout]

    return processors.TemplateProcessing(
        single=sequence(0),
        pair=sequence(0) + sequence(1),
        special_tokens=[(token, i) for i, token in specials.items()],
    )


def _write_st_config(
    folder: Path,
    dimension: int,
    spec: EmbeddingSpec,
    prompts: dict[str, str],
    default: str | None,
    normalize: bool,
) -> None:
    """sentence-transformers' module list and configs, as its 6.x ``save`` writes them."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING_MODULE},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
        (folder / "2_Normalize").mkdir()
    atomic_write_json(folder / "modules.json", modules)
    # Text only: SmolLM2-style chat templates would otherwise route text through them.
    atomic_write_json(
        folder / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {
                "text": {"method": "forward", "method_output_name": "last_hidden_state"}
            },
            "module_output_name": "token_embeddings",
        },
    )
    atomic_write_json(
        folder / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": default,
            "matryoshka_dims": spec.matryoshka_dims or None,
            "similarity_fn_name": "cosine",
        },
    )
    atomic_write_json(
        folder / "1_Pooling" / "config.json",
        {
            "embedding_dimension": dimension,
            "pooling_mode": ST_POOLING[spec.pooling],
            "include_prompt": True,
        },
    )
