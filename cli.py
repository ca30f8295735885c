"""The command line: `python gpt2.py PROMPT ...` (or `python cli.py ...`) parses its options here and
runs one of three modes: continue one prompt, continue every prompt of a file, or score a text."""
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

import gpt2
import sampling
import utils
from cli_files import Prompt, append_records, completion_record, count_finished_records, read_prompts, read_text
from download import MODEL_SIZES
from encoder import Encoder
from errors import GPT2Error, UsageError
from stop_text import StopWatcher, parse_escapes

if TYPE_CHECKING:
    from tqdm import tqdm


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid positive_int value: 'x'"
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):  # also rejects nan
        raise ValueError(text)
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def penalty_factor(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):  # also rejects nan
        raise ValueError(text)
    return value


def openai_penalty(text: str) -> float:
    value = float(text)
    if not -2 <= value <= 2:  # OpenAI's range; also rejects nan
        raise ValueError(text)
    return value


def stop_text(text: str) -> str:
    try:
        value = parse_escapes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not value:
        raise argparse.ArgumentTypeError("a stop text cannot be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="gpt2.py",
        description="Continue a prompt with OpenAI's GPT-2, in plain NumPy; or many prompts; or score a text.",
        epilog="A prompt that starts with '-' goes after '--', e.g. gpt2.py -- '-1 is a number'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("prompt", nargs="?", help="text to continue, exactly as typed ('' for an unconditional sample)")
    add("--n_tokens_to_generate", type=positive_int, default=40, help="how many tokens to add")
    which = parser.add_mutually_exclusive_group().add_argument
    which("--model_size", choices=MODEL_SIZES, default="124M", help="which of OpenAI's GPT-2 releases")
    which("--model", metavar="PATH_OR_NAME",
          help="a GPT-2 directory (OpenAI's or Hugging Face's format), or a hub name such as "
               "openai-community/gpt2 found in the local Hugging Face cache; nothing is downloaded")
    add("--models_dir", default=None,
        help="where model files are kept; it must exist (default: ./models, created on first use)")
    add("--base_url", default=None, help="download from here instead of OpenAI's bucket (or set GPT2_BASE_URL)")
    add("--verify", action="store_true",
        help="check every tensor against its checkpoint's CRC32C checksum again (done once after each download)")
    add("--threads", type=positive_int, default=None,
        help="BLAS threads (default: as OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else all cores)")
    sampling = parser.add_argument_group("choosing tokens").add_argument
    sampling("--temperature", type=non_negative_float, default=0.0, help="0: greedy; higher: more random")
    sampling("--top_k", type=non_negative_int, default=0, help="sample among the K most likely tokens (0: all)")
    sampling("--top_p", type=probability, default=1.0,
             help="sample among the most likely tokens holding this much probability (1: all)")
    sampling("--seed", type=non_negative_int, default=None, help="random seed: the same seed gives the same sample")
    sampling("--ignore_eos", action="store_true", help="keep going after <|endoftext|> instead of stopping")
    sampling("--show_probs", type=non_negative_int, default=0, metavar="K",
             help="print the top K candidates of every step on stderr")
    sampling("--stop", type=stop_text, action="append", metavar="TEXT",
             help=r"end where the continuation first contains TEXT (repeatable; \n, \t, \xHH, \uHHHH understood)")
    sampling("--repetition_penalty", type=penalty_factor, default=1.0, metavar="R",
             help="penalise every token already in prompt or continuation (transformers' semantics; 1: off)")
    sampling("--frequency_penalty", type=openai_penalty, default=0.0, metavar="F",
             help="subtract F x (times generated) from a token's logit (OpenAI's semantics; -2 to 2)")
    sampling("--presence_penalty", type=openai_penalty, default=0.0, metavar="P",
             help="subtract P from the logit of every token generated so far (OpenAI's semantics; -2 to 2)")
    sampling("--context_keep", type=positive_int, default=None, metavar="K",
             help="past the context window, go on from the last K tokens, below n_ctx (default: n_ctx // 2)")
    batch = parser.add_argument_group("many prompts").add_argument
    batch("--prompts_file", metavar="PATH",
          help='generate for each line of PATH (of a .jsonl file: each {"prompt": ...}); prints JSON Lines')
    batch("--batch_size", type=positive_int, default=8, help="how many prompts share each forward pass")
    batch("--output", metavar="PATH",
          help="write the JSON Lines here; run again with the same arguments to continue an interrupted run")
    scoring = parser.add_argument_group("scoring a text").add_argument
    scoring("--score", metavar="PATH",
            help="print the average negative log-likelihood and perplexity of PATH's text ('-': standard input)")
    scoring("--stride", type=positive_int, default=None,
            help="for texts longer than n_ctx, how far the window moves; below n_ctx (default: n_ctx // 2)")
    scoring("--json", action="store_true", help="with --score: print JSON, with every token's log-probability")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.prompt is not None) + (args.prompts_file is not None) + (args.score is not None) != 1:
        parser.error("give exactly one of: a prompt, --prompts_file PATH, --score PATH")
    for option, value, needs, mode in [
        ("--output", args.output, "--prompts_file", args.prompts_file),
        ("--json", args.json, "--score", args.score),
        ("--stride", args.stride, "--score", args.score),
        ("--show_probs", args.show_probs, "a single prompt", args.prompt),
    ]:
        if value and mode is None:
            parser.error(f"{option} goes with {needs}")
    for option, value in (("--models_dir", args.models_dir), ("--base_url", args.base_url)):
        if args.model is not None and value is not None:
            parser.error(f"{option} goes with --model_size, not with --model")
    if args.score is not None:
        generating_only = [("--stop", args.stop), ("--repetition_penalty", args.repetition_penalty != 1),
                           ("--frequency_penalty", args.frequency_penalty),
                           ("--presence_penalty", args.presence_penalty), ("--context_keep", args.context_keep)]
        for option, value in generating_only:
            if value:
                parser.error(f"{option} goes with a prompt or --prompts_file, not --score")
    return args


# ---------------------------------------------------------------- one prompt


def token_repr(encoder: Encoder, token: int) -> str:
    return repr(encoder.decode([token]))


def describe_step(encoder: Encoder, step: int, logits: np.ndarray, token: int, k: int) -> str:
    """One line for --show_probs: the model's top k next tokens with their probabilities, and the pick."""
    probs = gpt2.softmax(logits)  # the model's own distribution (temperature 1, before any filtering)
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
    if args.model is not None:
        encoder, hparams, params = utils.load_model(args.model, args.verify)
        if hparams.get("weights_dtype", "F32") != "F32":
            print(f"gpt2.py: note: {args.model} holds {hparams['weights_dtype']} weights, converted to float32 "
                  "in memory", file=sys.stderr)
        check_keep(args, hparams["n_ctx"])
        return encoder, hparams, params
    models_dir = args.models_dir or "models"
    if args.models_dir is not None and not os.path.isdir(models_dir):  # a typo should not start a download elsewhere
        raise GPT2Error(f"--models_dir {models_dir} is not a directory: create it or check the path")
    encoder, hparams, params = utils.load_encoder_hparams_and_params(args.model_size, models_dir, args.base_url,
                                                                     args.verify)
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


def run_prompt(args: argparse.Namespace) -> None:
    encoder, hparams, params = load_model(args)
    inputs = encoder.encode(args.prompt) or [encoder.eot_token]  # empty prompt: start a new document
    gpt2.check_context(len(inputs), hparams["n_ctx"])
    pick = make_picker(args, args.seed, inputs)
    keep = args.context_keep or hparams["n_ctx"] // 2
    steps = gpt2.generate_steps(inputs, params, hparams["n_head"], args.n_tokens_to_generate, pick, keep,
                                say_shift_once(hparams["n_ctx"], keep))
    eot_token = None if args.ignore_eos else encoder.eot_token
    # on one terminal, text streamed between the --show_probs rows would break them: text after rows
    one_terminal = args.show_probs and sys.stdout.isatty() and sys.stderr.isatty()
    out = io.BytesIO() if one_terminal else sys.stdout.buffer
    stream_continuation(encoder, steps, eot_token, args.show_probs, out, sys.stderr, args.stop or [])
    if one_terminal:
        sys.stdout.buffer.write(out.getvalue())
        sys.stdout.flush()
    if sys.stdout.isatty():
        print()  # end the line in a terminal; files and pipes get exactly the continuation


# ---------------------------------------------------------------- many prompts


def run_prompts_file(args: argparse.Namespace) -> None:
    prompts = read_prompts(args.prompts_file)  # all of it is checked before the model loads
    encoder, hparams, params = load_model(args)
    encoded = [encoder.encode(prompt.text) or [encoder.eot_token] for prompt in prompts]
    for prompt, tokens in zip(prompts, encoded):  # every prompt must fit before any work starts
        try:
            gpt2.check_context(len(tokens), hparams["n_ctx"])
        except gpt2.ContextError as e:
            raise gpt2.ContextError(f"{args.prompts_file} line {prompt.line}: {e}") from None
    first = count_finished_records(args.output, prompts) if args.output else 0
    with progress_bar(total=len(prompts), initial=first, unit="prompt", desc="prompts") as bar:
        if args.output:
            with open(args.output, "ab") as out:
                write_completions(args, encoder, params, hparams["n_head"], prompts, encoded, first, out, bar)
        else:
            out = sys.stdout.buffer
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
    if args.score is not None:
        run_score(args)
    elif args.prompts_file is not None:
        run_prompts_file(args)
    else:
        run_prompt(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
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


if __name__ == "__main__":
    main()
