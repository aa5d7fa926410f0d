"""Retrieval tasks in the BEIR / MTEB layout: a strict loader and the named-task registry.

A task folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``;
graded relevance allowed, >= 1 counts as relevant). Any of them may be gzipped.
A document's text is ``title + " " + text`` (stripped) when it has a title, as in
BEIR and MTEB, else its text unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmembed.data.errors import DataError
from lmembed.data.records import iter_jsonl, iter_tsv
from lmembed.data.sts import DATA_DIR_ENV, resolve_data_dir, resolve_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalInfo:
    """A named task: its folder under the data dir and its canonical size."""

    name: str
    folder: str
    queries: int
    documents: int
    # Keep every judged document and the first others up to this many (a smaller corpus).
    max_documents: int | None = None


RETRIEVAL_TASKS: dict[str, RetrievalInfo] = {
    info.name: info
    for info in (
        RetrievalInfo("stsb-paraphrase", "retrieval/stsb-paraphrase", 309, 10269),
        # Sized for slow models on a CPU (the demo): the STSb test documents and the first
        # STSb dev distractors.
        RetrievalInfo("stsb-paraphrase-mini", "retrieval/stsb-paraphrase", 309, 1500, 1500),
    )
}


@dataclass(frozen=True)
class RetrievalTask:
    """Queries with relevance judgements, and the corpus they search."""

    name: str
    path: Path
    split: str
    doc_ids: list[str]
    documents: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    corpus_sha256: str


@dataclass(frozen=True)
class TaskSelection:
    """A ``--tasks`` value split into STS tasks (names or files) and retrieval tasks."""

    sts: list[str]
    retrieval: list[str]


def split_tasks(spec: str | Sequence[str]) -> TaskSelection:
    """Partition ``"quick,stsb-paraphrase,pairs.tsv"``: retrieval names and BEIR folders
    go to ``retrieval``, everything else through ``resolve_tasks`` (STS)."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    sts, retrieval = [], []
    for part in (p.strip() for p in parts if p.strip()):
        if part.lower() in RETRIEVAL_TASKS or _is_beir_folder(Path(part)):
            retrieval.append(part.lower() if part.lower() in RETRIEVAL_TASKS else part)
        else:
            sts.append(part)
    return TaskSelection(resolve_tasks(sts) if sts else [], list(dict.fromkeys(retrieval)))


def load_retrieval(
    task: str | Path, data_dir: str | Path | None = None, split: str = "test"
) -> RetrievalTask:
    """A BEIR-layout folder, or a registered task name (read from the data dir)."""
    name = str(task)
    if name.lower() in RETRIEVAL_TASKS and not _is_beir_folder(Path(task)):
        info = RETRIEVAL_TASKS[name.lower()]
        folder = resolve_data_dir(data_dir) / info.folder
        if not folder.is_dir():
            raise DataError(
                folder,
                f"folder for retrieval task {info.name!r} not found",
                hint=f"point --data-dir / {DATA_DIR_ENV} at a folder that has {info.folder}",
            )
        loaded = _load_folder(folder, info.name, split, info.max_documents)
        _check_size(loaded, info)
        return loaded
    folder = Path(task)
    if not folder.is_dir():
        valid = ", ".join(RETRIEVAL_TASKS)
        raise DataError(
            folder,
            "not a retrieval task name or folder",
            hint=f"give a folder with corpus.jsonl, queries.jsonl and qrels/, or one of: {valid}",
        )
    return _load_folder(folder, folder.name, split)


def _load_folder(
    folder: Path, name: str, split: str, max_documents: int | None = None
) -> RetrievalTask:
    corpus_path = _find(folder, "corpus.jsonl")
    doc_ids, documents = _read_jsonl(corpus_path, with_title=True)
    query_ids, queries = _read_jsonl(_find(folder, "queries.jsonl"), with_title=False)
    qrels = _read_qrels(_qrels_path(folder, split), set(doc_ids), set(query_ids))
    if max_documents is not None:
        doc_ids, documents = _shrink(doc_ids, documents, qrels, max_documents)
    keep = [i for i, q in enumerate(query_ids) if any(g >= 1 for g in qrels.get(q, {}).values())]
    if not keep:
        raise DataError(folder, f"no query has a relevant document in split {split!r}")
    logger.info(
        "%s: %d queries with relevant documents (%d in the file), %d documents",
        folder,
        len(keep),
        len(query_ids),
        len(doc_ids),
    )
    return RetrievalTask(
        name=name,
        path=folder,
        split=split,
        doc_ids=doc_ids,
        documents=documents,
        query_ids=[query_ids[i] for i in keep],
        queries=[queries[i] for i in keep],
        qrels={query_ids[i]: qrels[query_ids[i]] for i in keep},
        corpus_sha256=hashlib.sha256(corpus_path.read_bytes()).hexdigest(),
    )


def _shrink(
    doc_ids: list[str], documents: list[str], qrels: dict[str, dict[str, int]], size: int
) -> tuple[list[str], list[str]]:
    """Every judged document plus the first unjudged ones, ``size`` in all, in file order."""
    judged = {doc for judgements in qrels.values() for doc in judgements}
    room = max(size - len(judged), 0)
    keep = []
    for i, doc in enumerate(doc_ids):
        if doc in judged:
            keep.append(i)
        elif room:
            keep.append(i)
            room -= 1
    return [doc_ids[i] for i in keep], [documents[i] for i in keep]


def _is_beir_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("corpus.jsonl", "corpus.jsonl.gz"))


def _find(folder: Path, filename: str) -> Path:
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        folder / filename,
        "file not found",
        hint="a BEIR task folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv",
    )


def _qrels_path(folder: Path, split: str) -> Path:
    try:
        return _find(folder / "qrels", f"{split}.tsv")
    except DataError:
        found = sorted(p.name.split(".")[0] for p in (folder / "qrels").glob("*.tsv*"))
        raise DataError(
            folder / "qrels" / f"{split}.tsv",
            f"no qrels for split {split!r}",
            hint=f"splits found: {', '.join(found) or 'none'}",
        ) from None


def _read_jsonl(path: Path, with_title: bool) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    records = iter_jsonl(
        path,
        expected="one JSON object a line",
        example='{"_id": ..., "text": ...}',
        hint="fix the invalid JSON: each line must be one complete object",
    )
    for number, record in records:
        ident = _field(path, number, record, "_id", (str, int))
        text = _field(path, number, record, "text", (str,))
        title = record.get("title") if with_title else None
        if title is not None and not isinstance(title, str):
            raise DataError(path, "title must be a string", line=number, column="title")
        if ident in seen:
            raise DataError(path, f"duplicate _id {ident!r}", line=number, column="_id")
        seen.add(ident)
        ids.append(ident)
        texts.append(f"{title} {text}".strip() if title else text)
    if not ids:
        raise DataError(path, "no records", hint="one JSON object a line with _id and text")
    return ids, texts


def _field(path: Path, line: int, record: dict, key: str, kinds: tuple[type, ...]) -> str:
    value = record.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        raise DataError(
            path,
            f"missing or non-string {key!r}" if key == "text" else f"missing or invalid {key!r}",
            line=line,
            column=key,
            hint=f"every record needs {key!r}",
        )
    return str(value)


def _read_qrels(path: Path, doc_ids: set[str], query_ids: set[str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    unknown = {"documents": 0, "queries": 0}
    for number, cells in iter_tsv(path, expected="query-id<TAB>corpus-id<TAB>score lines"):
        if not "".join(cells).strip() or (number == 1 and cells[0] == "query-id"):
            continue
        if len(cells) != 3:
            raise DataError(
                path,
                f"{len(cells)} tab-separated column(s), need 3",
                line=number,
                hint="query-id<TAB>corpus-id<TAB>score",
            )
        query, doc, grade = cells
        if doc not in doc_ids or query not in query_ids:
            unknown["documents" if doc not in doc_ids else "queries"] += 1
            continue
        qrels.setdefault(query, {})[doc] = _grade(path, number, grade)
    for kind, count in unknown.items():
        if count:
            logger.warning(
                "%s: %d judgement(s) name %s not in the task; skipped", path, count, kind
            )
    return qrels


def _grade(path: Path, line: int, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise DataError(
            path,
            f"score {text!r} is not an integer",
            line=line,
            column="score",
            hint="relevance grades are integers: 0 not relevant, 1 or more relevant",
        )
    return int(value)


def _check_size(task: RetrievalTask, info: RetrievalInfo) -> None:
    if (len(task.queries), len(task.documents)) != (info.queries, info.documents):
        logger.warning(
            "%s: %d queries and %d documents, the canonical task has %d and %d; scores will "
            "not be comparable with published numbers",
            task.path,
            len(task.queries),
            len(task.documents),
            info.queries,
            info.documents,
        )
