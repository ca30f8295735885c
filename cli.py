"""The command line: `python gpt2.py PROMPT ...` (or `python cli.py ...`) runs one of its modes:
continue one prompt, continue every prompt of a file, or score a text. cli_options.py parses the
options."""
import argparse
import io
import json
import os
import sys
import time
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, TextIO

import numpy as np

import batch_api
import cli_files
import corpus
import explain
import explain_page
import gpt2
import jobs
import model_card
import score_page
import utils
from cli_files import Prompt, read_prompts, read_text
from cli_options import parse_args
from encoder import Encoder
from engine import Engine
from errors import GPT2Error, UsageError

if TYPE_CHECKING:
    from tqdm import tqdm


# ---------------------------------------------------------------- one prompt


def token_repr(encoder: Encoder, token: int) -> str:
    return repr(encoder.decode([token]))


def describe_step(encoder: Encoder, step: int, logits: np.ndarray, token: int, k: int) -> str:
    """One line for --show_probs: the model's top k next tokens with their probabilities, and the pick."""
    probs = gpt2.softmax(logits)  # what the choice was made from: temperature 1, after any penalties, unfiltered
    top = np.argsort(-probs, kind="stable")[:k]
    candidates = "  ".join(f"{token_repr(encoder, t)} {probs[t]:.1%}" for t in top)
    return f"step {step + 1:>4}: chose {token_repr(encoder, token)} ({probs[token]:.1%})  | {candidates}"


def stream_continuation(encoder: Encoder, events: Iterable, show_probs: int, out: BinaryIO, err: TextIO) -> None:
    """Write each event's text to `out` as it comes (the request's Continuation has held back what is not
    settled yet), and with show_probs the step's top candidates to `err`."""
    for step, (_, event) in enumerate(events):
        if show_probs and event.token is not None:
            print(describe_step(encoder, step, event.logits, event.token, show_probs), file=err, flush=True)
        out.write(event.text.encode("utf-8"))
        out.flush()


def load_model(args: argparse.Namespace) -> tuple[Encoder, dict, dict]:
    """--model's directory or hub name, or else --model_size from --models_dir (downloaded if missing)."""
    if args.model is not None:
        encoder, hparams, params, info = utils.open_model(args.model, args.verify)
    else:
        models_dir = args.models_dir or "models"
        if args.models_dir is not None and not os.path.isdir(models_dir):  # a typo must not download elsewhere
            raise GPT2Error(f"--models_dir {models_dir} is not a directory: create it or check the path")
        encoder, hparams, params = utils.load_encoder_hparams_and_params(args.model_size, models_dir,
                                                                         args.base_url, args.verify)
        info = utils.ModelInfo(os.path.join(models_dir, args.model_size), "openai")
    if args.verify and info.format == "huggingface":
        print("gpt2.py: note: --verify checks the CRC32C checksums of OpenAI's checkpoints; a safetensors file "
              "holds none, so only its structure was checked", file=sys.stderr)
    if info.converted:
        print(f"gpt2.py: note: {args.model} holds {'/'.join(info.stored_dtypes)} weights, converted to float32 "
              "in memory", file=sys.stderr)
    check_keep(args, hparams["n_ctx"])  # the first moment n_ctx is known; the weights are only mapped yet
    return encoder, hparams, params


def make_engine(encoder: Encoder, hparams: dict, params: dict, max_rows: int) -> Engine:
    return Engine(params, hparams["n_head"], encoder.eot_token, encoder.decode_bytes, max_rows=max_rows)


def run_engine(args: argparse.Namespace, engine: Engine) -> Iterable:
    """The engine's events until it has no work left; the first time a window is full, say so, once the
    event that filled it has been handled (its text printed)."""
    say = say_shift_once(engine.n_ctx, args.context_keep or engine.n_ctx // 2)
    for request, event in engine.run():
        yield request, event
        if event.shifted:
            say()


def check_keep(args: argparse.Namespace, n_ctx: int) -> None:
    """--context_keep must leave room for a new token: 1 .. n_ctx - 1 (known once hparams are read)."""
    if args.context_keep is not None and args.context_keep >= n_ctx:
        raise UsageError(f"argument --context_keep: {args.context_keep} must be below the model's context "
                         f"of {n_ctx} tokens")


def say_shift_once(n_ctx: int, keep: int) -> Callable[[], None]:
    """A note on stderr, the first time it is called: the context window is full."""
    said = []

    def say() -> None:
        if not said:
            said.append(True)
            print(f"gpt2.py: the context window ({n_ctx} tokens) is full: going on from the last {keep} "
                  "tokens (--context_keep sets how many)", file=sys.stderr, flush=True)

    return say


class Watch:
    """Passes the engine's events through, noting when each token arrived and, for --explain, its
    top 10 candidates, computed from the step's own logits as they pass."""

    def __init__(self, events: Iterable, top_k: int = 0):
        self.events, self.top_k = events, top_k
        self.tokens: list[int] = []
        self.times: list[float] = []  # seconds from the start of generation to each step's token
        self.top: list[list[tuple[int, float]]] = []

    def __iter__(self) -> Iterable:
        start = time.perf_counter()
        for request, event in self.events:
            if event.token is not None:
                self.times.append(time.perf_counter() - start)
                self.tokens.append(event.token)
                if self.top_k:
                    self.top.append(explain.top_candidates(event.logits, self.top_k))
            yield request, event


def print_timing(load_seconds: float, n_prompt: int, watch: Watch, card: dict) -> None:
    """--timing: where the time went, on stderr; decoding reads every weight once per token."""
    say = lambda text: print(f"timing: {text}", file=sys.stderr)  # noqa: E731
    say(f"loading the model: {load_seconds:.2f} s")
    if watch.times:
        first = watch.times[0]
        say(f"prompt pass, {n_prompt} tokens, to the first new token: {1000 * first:.1f} ms "
            f"({n_prompt / first:.1f} tokens/s)")
    if len(watch.times) > 1:
        per_token = (watch.times[-1] - watch.times[0]) / (len(watch.times) - 1)
        say(f"decode, {len(watch.times) - 1} tokens: {1000 * per_token:.1f} ms/token ({1 / per_token:.1f} tokens/s)")
        read = card["bytes_read_per_token"]
        say(f"each decode step reads {read / 2**20:.1f} MiB of weights: {read / per_token / 1e9:.1f} GB/s effective "
            "bandwidth, so decoding is bound by memory, not arithmetic")


def run_prompt(args: argparse.Namespace) -> None:
    if args.explain:
        explain_page.check_writable(args.explain)  # before any work
    started = time.perf_counter()
    encoder, hparams, params = load_model(args)
    load_seconds = time.perf_counter() - started
    cli_files.check_prompts_fit(encoder, [Prompt(1, args.prompt, None)], hparams["n_ctx"], None)  # before tokenizing it
    inputs = encoder.encode(args.prompt) or [encoder.eot_token]  # empty prompt: start a new document
    gpt2.check_context(len(inputs), hparams["n_ctx"])
    engine = make_engine(encoder, hparams, params, max_rows=1)
    engine.submit(inputs, args.settings)
    watch = Watch(run_engine(args, engine), explain.TOP_K if args.explain else 0)
    # on one terminal, text streamed between the --show_probs rows would break them: text after rows
    one_terminal = args.show_probs and sys.stdout.isatty() and sys.stderr.isatty()
    out = io.BytesIO() if one_terminal else sys.stdout.buffer
    stream_continuation(encoder, watch, args.show_probs, out, sys.stderr)
    if one_terminal:
        sys.stdout.buffer.write(out.getvalue())
        sys.stdout.flush()
    if sys.stdout.isatty():
        print()  # end the line in a terminal; files and pipes get exactly the continuation
    card = model_card.model_card(hparams, params) if args.timing or args.explain else None
    if args.timing:
        print_timing(load_seconds, len(inputs), watch, card)
    if args.explain:
        write_explain_report(args, encoder, hparams, params, inputs, watch, card)


def write_explain_report(args: argparse.Namespace, encoder: Encoder, hparams: dict, params: dict,
                         prompt: list[int], watch: Watch, card: dict) -> None:
    name = args.model or f"GPT-2 {args.model_size}"
    data = explain.explain_data(encoder, hparams, params, prompt, watch.tokens, watch.top,
                                model_card.format_card(card, name))
    used = {t["id"] for t in data["tokens"]} | {int(i) for i in np.unique(data["lens_ids"])}
    used |= {token for step in watch.top for token, _ in step}
    explain_page.write_report(args.explain, data, {t: encoder.decode([t]) for t in used},
                              f"Inside {name}: {args.prompt[:60]!r}")
    print(f"gpt2.py: wrote {args.explain}", file=sys.stderr)


def run_info(args: argparse.Namespace) -> None:
    """--info: the model card, without generating; the weights are only mapped, never read."""
    encoder, hparams, params = load_model(args)
    name = args.model or f"GPT-2 {args.model_size}"
    print(model_card.format_card(model_card.model_card(hparams, params), name))


# ---------------------------------------------------------------- many prompts


def run_prompts_file(args: argparse.Namespace) -> None:
    lines = batch_api.read_batch_lines(args.prompts_file) if args.prompts_file.lower().endswith(
        cli_files.JSONL_SUFFIXES) else None
    if lines is not None:
        return run_batch_file(args, lines)
    # --seed seeds each prompt by its place in the file (jobs.complete_prompts); a record's own seed is its own
    prompts = read_prompts(args.prompts_file, args.settings.with_changes(seed=None))  # checked before the model loads
    with cli_files.opened_output(args.output) as out:  # so is --output: refused, or locked for this run
        encoder, hparams, params = load_model(args)
        cli_files.check_prompts_fit(encoder, prompts, hparams["n_ctx"], args.prompts_file)  # before tokenizing them
        encoded = [encoder.encode(prompt.text) or [encoder.eot_token] for prompt in prompts]
        for prompt, tokens in zip(prompts, encoded):  # every prompt must fit before any work starts
            try:
                gpt2.check_context(len(tokens), hparams["n_ctx"])
                prompt.settings.check_for_model(hparams["n_vocab"], hparams["n_ctx"])
            except GPT2Error as e:
                raise type(e)(f"{args.prompts_file} line {prompt.line}: {e}") from None
        job = jobs.Job("prompts", args.prompts_file, prompts, jobs.CHUNK_BATCHES * args.batch_size,
                       {"batch_size": args.batch_size, "seed": args.seed}, encoded)
        run_job(args, job, model_for_jobs(args, encoder, hparams, params), out)


def run_batch_file(args: argparse.Namespace, lines: list) -> None:
    """--prompts_file in OpenAI's Batch format (batch_api.py): each line's body brings its own settings."""
    with cli_files.opened_output(args.output) as out:
        encoder, hparams, params = load_model(args)
        created = int(time.time()) if args.prompts_file == "-" else int(os.stat(args.prompts_file).st_mtime)
        options = {"batch_size": args.batch_size, "seed": args.seed, "created": created}
        job = jobs.Job("batch", args.prompts_file, lines, jobs.CHUNK_BATCHES * args.batch_size, options)
        run_job(args, job, model_for_jobs(args, encoder, hparams, params), out)


def model_for_jobs(args: argparse.Namespace, encoder: Encoder, hparams: dict, params: dict) -> jobs.Model:
    return jobs.Model(encoder, hparams, params, say_shift_once(hparams["n_ctx"], args.context_keep or
                                                               hparams["n_ctx"] // 2))


def run_job(args: argparse.Namespace, job: jobs.Job, model: jobs.Model, out: BinaryIO) -> None:
    """A prompts file's or a corpus's job, in this process (or on Ray, with --ray), resuming --output."""
    first = job.count_finished(args.output)
    with progress_bar(total=len(job.items), initial=first, unit=job.unit, desc=f"{job.unit}s") as bar:
        if args.ray is None:
            jobs.run_locally(job, model, first, out, bar)
            return
        import ray_jobs

        models_dir = os.path.abspath(args.models_dir or "models")
        model_dir = args.model if args.model is None or not os.path.isdir(args.model) else os.path.abspath(args.model)
        source = ray_jobs.ModelSource(model_dir, args.model_size, models_dir, args.base_url)
        memory = ray_jobs.run(job, first, out, bar, args.ray or None, source, args.threads or 1, args.ray_workers)
    ray_jobs.say_memory(memory)


# ---------------------------------------------------------------- scoring


def run_score(args: argparse.Namespace) -> None:
    if args.score.lower().endswith(cli_files.JSONL_SUFFIXES):
        return run_corpus(args)
    if args.explain:
        explain_page.check_writable(args.explain)  # before any work
    text = read_text(args.score)
    encoder, hparams, params = load_model(args)
    tokens = encoder.encode(text)
    if len(tokens) < 2:
        raise GPT2Error(f"{args.score} has {len(tokens)} token(s): scoring needs at least 2")
    stride = scoring_stride(args, hparams["n_ctx"])
    with progress_bar(total=len(tokens) - 1, unit="token", desc="scoring") as bar:
        progress = lambda n_scored: bar.update(n_scored - bar.n)
        if args.explain:  # the same windows and numbers, with each token's rank and top 10 kept for the page
            logprobs = score_page.score_and_write(args.explain, encoder, tokens, params, hparams["n_head"], stride,
                                                  progress, args.model or f"GPT-2 {args.model_size}", args.score)
        else:
            logprobs = gpt2.token_logprobs(tokens, params, hparams["n_head"], stride, progress=progress)
    if args.explain:
        print(f"gpt2.py: wrote {args.explain}", file=sys.stderr)
    summary = corpus.summary(logprobs, stride)
    if args.json:
        print(json.dumps({**summary, "tokens": corpus.per_token(encoder, tokens, logprobs)}, ensure_ascii=False))
    else:
        print(f"tokens scored: {len(logprobs)} (the first token has no context)")
        print(f"average negative log-likelihood: {summary['avg_nll']:.4f} nats/token")
        print(f"perplexity: {summary['perplexity']:.4f}")


def scoring_stride(args: argparse.Namespace, n_ctx: int) -> int:
    stride = args.stride or n_ctx // 2
    if stride >= n_ctx:  # windows must overlap, or each window's first token has no context
        raise GPT2Error(f"--stride {stride} must be smaller than the model's context ({n_ctx} tokens)")
    return stride


def run_corpus(args: argparse.Namespace) -> None:
    """--score docs.jsonl: one record per document, in input order (corpus.py)."""
    documents = corpus.read_documents(args.score)
    with cli_files.opened_output(args.output) as out:
        encoder, hparams, params = load_model(args)
        options = {"stride": scoring_stride(args, hparams["n_ctx"]), "json": args.json}
        job = jobs.Job("corpus", args.score, documents, jobs.CHUNK_DOCUMENTS, options)
        run_job(args, job, jobs.Model(encoder, hparams, params), out)


def progress_bar(**kwargs: object) -> "tqdm":
    """A tqdm bar on stderr, shown only on a terminal, so that pipes and files stay clean."""
    from tqdm import tqdm  # here, not at the top: most runs show no bar, and tqdm's import is slow

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), **kwargs)


def run_serve(args: argparse.Namespace) -> None:
    """--serve: the model behind an OpenAI-compatible API until Ctrl-C or SIGTERM (server.py)."""
    try:
        import server
    except ImportError as e:
        raise GPT2Error(f"--serve needs {e.name}: pip install -r requirements-serve.txt") from None
    encoder, hparams, params = load_model(args)
    engine = make_engine(encoder, hparams, params, max_rows=args.max_batch)
    model_id = args.model or f"gpt2-{args.model_size}"
    app = server.make_app(engine, encoder, model_id, hparams["n_ctx"], args.api_key, args.max_queue, args.cors_origin)
    print(f"gpt2.py: serving {model_id} on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    server.Server(app, args.host, args.port).run()


def run(args: argparse.Namespace) -> None:
    if args.serve:
        run_serve(args)
    elif args.info:
        run_info(args)
    elif args.score is not None:
        run_score(args)
    elif args.prompts_file is not None:
        run_prompts_file(args)
    else:
        run_prompt(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cli_files.check_standard_streams(needs_stdout=args.output is None)
        if args.threads:
            from threadpoolctl import threadpool_limits  # only when asked: it costs start-up time

            threadpool_limits(args.threads)
        run(args)
    except UsageError as e:  # like argparse's errors
        print(f"gpt2.py: error: {e} (see --help)", file=sys.stderr)
        sys.exit(2)
    except GPT2Error as e:
        sys.exit(f"gpt2.py: error: {e}")
    except MemoryError:
        sys.exit("gpt2.py: error: out of memory: use a smaller --batch_size, fewer tokens or a smaller model")
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has gone, nothing left to say
        sys.stderr.close()
        sys.exit(141)
    except OSError as e:  # files name themselves in GPT2Errors: what is left is standard output, full or unusable
        cli_files.silence_stdout()
        sys.exit(f"gpt2.py: error: cannot write standard output: {e.strerror or e}")


if __name__ == "__main__":
    main()
