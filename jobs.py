"""An offline job: the inputs of a file (prompts, OpenAI Batch lines, or documents to score) cut into
chunks, and their records written in input order to a file that an interrupted run continues.

A chunk is the unit of work: CHUNK_ITEMS consecutive inputs (prompts: 4 x --batch_size), computed on
their own, by a fresh engine or, for documents, by the same packing into forward passes. Float32
results depend on which rows share a matrix product (and on the BLAS threads), so computing in
fixed chunks is what makes one process, a resumed run and a Ray cluster (ray_jobs.py) write the
same bytes. A resumed run recomputes the chunk it stopped in and writes only its missing records.
"""
import dataclasses
import sys
import time
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple

import cli_files
import corpus
from cli_files import append_records, completion_record
from engine import Engine

CHUNK_DOCUMENTS = 64  # a corpus's documents per chunk: enough to fill several passes of short ones
CHUNK_BATCHES = 4  # a prompts file's chunk: this many times --batch_size prompts, so that rows drain rarely


class Model(NamedTuple):
    encoder: Any
    hparams: dict
    params: dict
    on_shift: Callable[[], None] | None = None  # called when a request's context window is full (the CLI says so)


@dataclasses.dataclass
class Job:
    kind: str  # "corpus", "prompts" or "batch"
    path: str  # the input file, for messages
    items: list  # corpus.Document, cli_files.Prompt or batch_api.BatchLine, in input order
    chunk_size: int
    options: dict  # what a chunk needs besides the model and its items: stride, json, batch_size, seed, ...
    tokens: list | None = None  # a prompts file's prompts, tokenized once by the driver
    offset: int = 0  # the place in the file of items[0] (a worker is sent one chunk's items only)

    @property
    def unit(self) -> str:
        return {"corpus": "document", "prompts": "prompt", "batch": "request"}[self.kind]

    def chunks(self, first: int = 0) -> list[tuple[int, int]]:
        """(begin, end) of each chunk still to compute, when the first `first` records are written."""
        start = first - first % self.chunk_size
        return [(begin, min(begin + self.chunk_size, len(self.items)))
                for begin in range(start, len(self.items), self.chunk_size)]

    def count_finished(self, output: str | None) -> int:
        if output is None:
            return 0
        checks = {"corpus": (corpus.is_record_of, corpus.could_start_record_of),
                  "prompts": (cli_files.is_record_of, cli_files.could_start_record_of)}
        if self.kind == "batch":
            import batch_api

            checks["batch"] = (batch_api.is_record_of, batch_api.could_start_record_of)
        return cli_files.count_finished_records(output, self.items, *checks[self.kind])


class Chunk(NamedTuple):
    begin: int
    records: list[bytes]  # one per input of the chunk, in order
    n_tokens: int  # tokens generated or scored: for the tokens/s figure


def compute_chunk(job: Job, model: Model, begin: int, end: int) -> Chunk:
    """The records of items[begin:end]: the same bytes wherever and whenever it runs."""
    items = job.items[begin - job.offset : end - job.offset]
    if job.kind == "corpus":
        return Chunk(begin, *corpus.score_documents(items, model.encoder, model.params, model.hparams["n_head"],
                                                    job.options["stride"], job.options["json"]))
    engine = Engine(model.params, model.hparams["n_head"], model.encoder.eot_token, model.encoder.decode_bytes,
                    max_rows=job.options["batch_size"])
    if job.kind == "batch":
        import batch_api

        records, n_tokens = batch_api.run_lines(engine, model, items, job.options)
        return Chunk(begin, records, n_tokens)
    tokens = job.tokens[begin - job.offset : end - job.offset]
    return Chunk(begin, *complete_prompts(engine, items, tokens, begin, job.options["seed"], model.on_shift))


def complete_prompts(engine: Engine, prompts: list, encoded: list[list[int]], first_row: int,
                     seed: int | None, on_shift: Callable | None = None) -> tuple[list[bytes], int]:
    """Generate for each prompt on one engine, --batch_size rows at a time: a finished prompt's row goes
    to the next prompt at once. Each prompt draws from its own generator, seeded by its row in the file,
    so a sample depends neither on the batch size nor on the prompts beside it; a record's own seed is its own."""
    requests = []
    for row, (prompt, tokens) in enumerate(zip(prompts, encoded), start=first_row):
        own = prompt.settings.seed
        requests.append(engine.submit(tokens, prompt.settings, [seed, row] if own is None and seed is not None
                                      else own))
    for _, event in engine.run():
        if event.shifted and on_shift is not None:
            on_shift()
    records = [completion_record(p.line, p.text, r.continuation.text, r.continuation.tokens)
               for p, r in zip(prompts, requests)]
    return records, sum(len(r.continuation.tokens) for r in requests)


# ---------------------------------------------------------------- writing, in input order


def write_in_order(chunks: Iterable[Chunk], first: int, out: BinaryIO, bar: Any) -> None:
    """Write each chunk's records as soon as every earlier chunk's are written, skipping the first
    `first` records (written by an earlier run). Chunks may arrive in any order."""
    durable = out is not sys.stdout.buffer
    waiting: dict[int, Chunk] = {}
    next_record, n_tokens, started = first, 0, time.perf_counter()
    for chunk in chunks:
        waiting[chunk.begin] = chunk
        n_tokens += chunk.n_tokens
        for begin in sorted(waiting):
            if begin + len(waiting[begin].records) <= next_record:
                del waiting[begin]  # all of it written before (a resumed run's first chunk, done anew)
            elif begin <= next_record:
                records = waiting.pop(begin).records[next_record - begin :]
                append_records(out, b"".join(records), durable)
                next_record += len(records)
                bar.set_postfix_str(f"{n_tokens / (time.perf_counter() - started):.1f} tokens/s", refresh=False)
                bar.update(len(records))


def run_locally(job: Job, model: Model, first: int, out: BinaryIO, bar: Any) -> None:
    write_in_order(local_chunks(job, model, first), first, out, bar)


def local_chunks(job: Job, model: Model, first: int) -> Iterator[Chunk]:
    for begin, end in job.chunks(first):
        yield compute_chunk(job, model, begin, end)
