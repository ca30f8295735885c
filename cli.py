"""The command line: `python gpt2.py PROMPT ...` (or `python cli.py ...`) runs one of its modes:
continue one prompt, continue every prompt of a file, or score a text. cli_options.py parses the
options."""
import argparse
import codecs
import io
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, TextIO

import numpy as np

import cli_files
import explain
import explain_page
import gpt2
import model_card
import sampling
import utils
from cli_files import Prompt, append_records, completion_record, count_finished_records, read_prompts, read_text
from cli_options import parse_args
from encoder import Encoder
from errors import GPT2Error, UsageError
from stop_text import StopWatcher

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


def stream_continuation(
    encoder: Encoder, steps: Iterable, eot_token: int | None, show_probs: int, out: BinaryIO, err: TextIO,
    stops: list[str] = (),
) -> None:
    """Write each token's text to `out` as soon as it forms complete UTF-8 characters and cannot be
    the start of a stop text; stop at eot_token or at the first stop text (which is not written)."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds back a split character
    watcher = StopWatcher(stops)
    for step, (token, logits) in enumerate(steps):
        if show_probs:
            print(describe_step(encoder, step, logits, token, show_probs), file=err, flush=True)
        if token == eot_token:
            break
        out.write(watcher.feed(utf8.decode(encoder.decode_bytes([token]))).encode("utf-8"))
        out.flush()
        if watcher.stopped:
            break
    # a character cut off at the end: U+FFFD, as encoder.decode gives
    out.write((watcher.feed(utf8.decode(b"", final=True)) + watcher.finish()).encode("utf-8"))
    out.flush()


def load_model(args: argparse.Namespace) -> tuple[Encoder, dict, dict]:
    """--model's directory or hub name, or else --model_size from --models_dir (downloaded if missing)."""
    if args.model is not None:
        encoder, hparams, params = utils.load_model(args.model, args.verify)
    else:
        models_dir = args.models_dir or "models"
        if args.models_dir is not None and not os.path.isdir(models_dir):  # a typo must not download elsewhere
            raise GPT2Error(f"--models_dir {models_dir} is not a directory: create it or check the path")
        encoder, hparams, params = utils.load_encoder_hparams_and_params(args.model_size, models_dir,
                                                                         args.base_url, args.verify)
    if args.verify and hparams.get("format") == "huggingface":
        print("gpt2.py: note: --verify checks the CRC32C checksums of OpenAI's checkpoints; a safetensors file "
              "holds none, so only its structure was checked", file=sys.stderr)
    if hparams.get("weights_dtype", "F32") != "F32":
        print(f"gpt2.py: note: {args.model} holds {hparams['weights_dtype']} weights, converted to float32 "
              "in memory", file=sys.stderr)
    check_keep(args, hparams["n_ctx"])  # the first moment n_ctx is known; the weights are only mapped yet
    return encoder, hparams, params


def make_picker(args: argparse.Namespace, seed: object, prompt: list[int]) -> Callable:
    return sampling.make_picker(args.temperature, args.top_k, args.top_p, seed, args.repetition_penalty,
                                args.frequency_penalty, args.presence_penalty, prompt)


def check_keep(args: argparse.Namespace, n_ctx: int) -> None:
    """--context_keep must leave room for a new token: 1 .. n_ctx - 1 (known once hparams are read)."""
    if args.context_keep is not None and args.context_keep >= n_ctx:
        raise UsageError(f"argument --context_keep: {args.context_keep} must be below the model's context "
                         f"of {n_ctx} tokens")


def say_shift_once(n_ctx: int, keep: int) -> Callable:
    """on_shift for the generators: one line on stderr the first time a window is full."""
    said = []

    def on_shift(rows: list[int], step: int) -> None:
        if not said:
            said.append(step)
            print(f"gpt2.py: the context window ({n_ctx} tokens) is full: going on from the last {keep} "
                  "tokens (--context_keep sets how many)", file=sys.stderr, flush=True)

    return on_shift


class Watch:
    """Passes the generation's steps through, noting when each one arrived and, for --explain, its
    top 10 candidates, computed from the step's own logits as they pass."""

    def __init__(self, steps: Iterable, top_k: int = 0):
        self.steps, self.top_k = steps, top_k
        self.tokens: list[int] = []
        self.times: list[float] = []  # seconds from the start of generation to each step's token
        self.top: list[list[tuple[int, float]]] = []

    def __iter__(self) -> Iterable:
        start = time.perf_counter()
        for token, logits in self.steps:
            self.times.append(time.perf_counter() - start)
            self.tokens.append(token)
            if self.top_k:
                self.top.append(explain.top_candidates(logits, self.top_k))
            yield token, logits


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
    pick = make_picker(args, args.seed, inputs)
    keep = args.context_keep or hparams["n_ctx"] // 2
    steps = gpt2.generate_steps(inputs, params, hparams["n_head"], args.n_tokens_to_generate, pick, keep,
                                say_shift_once(hparams["n_ctx"], keep))
    watch = Watch(steps, explain.TOP_K if args.explain else 0)
    eot_token = None if args.ignore_eos else encoder.eot_token
    # on one terminal, text streamed between the --show_probs rows would break them: text after rows
    one_terminal = args.show_probs and sys.stdout.isatty() and sys.stderr.isatty()
    out = io.BytesIO() if one_terminal else sys.stdout.buffer
    stream_continuation(encoder, watch, eot_token, args.show_probs, out, sys.stderr, args.stop or [])
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
    prompts = read_prompts(args.prompts_file)  # all of it is checked before the model loads
    with cli_files.opened_output(args.output) as out:  # so is --output: refused, or locked for this run
        encoder, hparams, params = load_model(args)
        cli_files.check_prompts_fit(encoder, prompts, hparams["n_ctx"], args.prompts_file)  # before tokenizing them
        encoded = [encoder.encode(prompt.text) or [encoder.eot_token] for prompt in prompts]
        for prompt, tokens in zip(prompts, encoded):  # every prompt must fit before any work starts
            try:
                gpt2.check_context(len(tokens), hparams["n_ctx"])
            except gpt2.ContextError as e:
                raise gpt2.ContextError(f"{args.prompts_file} line {prompt.line}: {e}") from None
        first = count_finished_records(args.output, prompts) if args.output else 0
        with progress_bar(total=len(prompts), initial=first, unit="prompt", desc="prompts") as bar:
            write_completions(args, encoder, params, hparams["n_head"], prompts, encoded, first, out, bar)


def write_completions(
    args: argparse.Namespace, encoder: Encoder, params: dict, n_head: int,
    prompts: list[Prompt], encoded: list[list[int]], first: int, out: BinaryIO, bar: "tqdm",
) -> None:
    """Generate for prompts[first:] in batches, writing each batch's records as soon as it is done."""
    eot_token = None if args.ignore_eos else encoder.eot_token
    n_ctx = params["wpe"].shape[0]
    keep = args.context_keep or n_ctx // 2
    on_shift = say_shift_once(n_ctx, keep)
    n_new_tokens, started = 0, time.perf_counter()
    for start in range(first, len(prompts), args.batch_size):
        rows = range(start, min(start + args.batch_size, len(prompts)))
        # each prompt draws from its own generator, so a sample does not depend on the batch size
        picks = [make_picker(args, None if args.seed is None else [args.seed, row], encoded[row]) for row in rows]
        stops = [args.stop or [] if prompts[row].stop is None else prompts[row].stop for row in rows]
        batch = [encoded[row] for row in rows]
        steps = gpt2.generate_batch_steps(batch, params, n_head, args.n_tokens_to_generate, picks, keep, on_shift)
        completions = collect_completions(encoder, steps, eot_token, stops)
        records = b"".join(completion_record(prompts[row].line, prompts[row].text, text, tokens)
                           for row, (tokens, text) in zip(rows, completions))
        append_records(out, records, durable=out is not sys.stdout.buffer)
        n_new_tokens += sum(len(tokens) for tokens, _ in completions)
        bar.set_postfix_str(f"{n_new_tokens / (time.perf_counter() - started):.1f} tokens/s", refresh=False)
        bar.update(len(rows))


def collect_completions(
    encoder: Encoder, steps: Iterable, eot_token: int | None, stops: list[list[str]]
) -> list[tuple[list[int], str]]:
    """(tokens, text) of each row: a row is done at eot_token (not included) or once its text contains
    one of its stop texts (its tokens then include the one that completed the stop text; its text
    ends before the stop text)."""
    tokens = [[] for _ in stops]
    utf8 = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in stops]
    watchers = [StopWatcher(row_stops) for row_stops in stops]
    texts = [""] * len(stops)
    done = [False] * len(stops)
    for new_tokens, _ in steps:
        for row, token in enumerate(new_tokens):
            if done[row] or token == eot_token:
                done[row] = True
                continue
            tokens[row].append(token)
            texts[row] += watchers[row].feed(utf8[row].decode(encoder.decode_bytes([token])))
            done[row] = watchers[row].stopped
        if all(done):
            break
    for row, watcher in enumerate(watchers):
        texts[row] += watcher.feed(utf8[row].decode(b"", final=True)) + watcher.finish()
    return list(zip(tokens, texts))


# ---------------------------------------------------------------- scoring


def run_score(args: argparse.Namespace) -> None:
    text = read_text(args.score)
    encoder, hparams, params = load_model(args)
    tokens = encoder.encode(text)
    if len(tokens) < 2:
        raise GPT2Error(f"{args.score} has {len(tokens)} token(s): scoring needs at least 2")
    stride = args.stride or hparams["n_ctx"] // 2
    if stride >= hparams["n_ctx"]:  # windows must overlap, or each window's first token has no context
        raise GPT2Error(f"--stride {stride} must be smaller than the model's context ({hparams['n_ctx']} tokens)")
    with progress_bar(total=len(tokens) - 1, unit="token", desc="scoring") as bar:
        progress = lambda n_scored: bar.update(n_scored - bar.n)
        logprobs = gpt2.token_logprobs(tokens, params, hparams["n_head"], stride, progress=progress)
    nll = -math.fsum(logprobs.tolist()) / len(logprobs)  # average negative log-likelihood, nats per token
    summary = {"n_tokens_scored": len(logprobs), "avg_nll": nll, "perplexity": math.exp(nll), "stride": stride}
    if args.json:
        # a token holding part of a character's bytes shows U+FFFD in "text"; "token" is exact
        per_token = [{"token": t, "text": encoder.decode([t]), "logprob": float(lp)}
                     for t, lp in zip(tokens[1:], logprobs)]
        print(json.dumps({**summary, "tokens": per_token}, ensure_ascii=False))
    else:
        print(f"tokens scored: {len(logprobs)} (the first token has no context)")
        print(f"average negative log-likelihood: {nll:.4f} nats/token")
        print(f"perplexity: {math.exp(nll):.4f}")


def progress_bar(**kwargs: object) -> "tqdm":
    """A tqdm bar on stderr, shown only on a terminal, so that pipes and files stay clean."""
    from tqdm import tqdm  # here, not at the top: most runs show no bar, and tqdm's import is slow

    return tqdm(file=sys.stderr, disable=not sys.stderr.isatty(), **kwargs)


def run(args: argparse.Namespace) -> None:
    if args.info:
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
