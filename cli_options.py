"""The command line's options: every option, its default and its help, and the checks that refuse
a bad value or a bad combination with argparse's one-line error (exit status 2) before any work."""
import argparse

from download import MODEL_SIZES
from settings import LARGEST_FACTOR, MAX_TEMPERATURE, SMALLEST_FACTOR, Settings, SettingsError
from stop_text import parse_escapes


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


def temperature(text: str) -> float:
    value = float(text)
    if not (value == 0 or SMALLEST_FACTOR <= value <= MAX_TEMPERATURE):  # also rejects nan and inf (see settings.py)
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: use 0 (greedy) or a value from {SMALLEST_FACTOR:g} to {MAX_TEMPERATURE}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # 0 keeps the most likely token only
        raise argparse.ArgumentTypeError(f"{text} is out of range: use a value from 0 to 1")
    return value


def penalty_factor(text: str) -> float:
    value = float(text)
    if not SMALLEST_FACTOR <= value <= LARGEST_FACTOR:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: use a value from {SMALLEST_FACTOR:g} to {LARGEST_FACTOR:g} (1: off)")
    return value


def openai_penalty(text: str) -> float:
    value = float(text)
    if not -2 <= value <= 2:  # OpenAI's range; also rejects nan
        raise ValueError(text)
    return value


def stop_text(text: str) -> str:
    try:
        value = parse_escapes(text)
    except ValueError as e:  # also chr()'s "arg not in range(0x110000)" for \U00110000
        message = str(e) if "escape" in str(e) else f"{text} escapes a code point above U+10FFFF"
        raise argparse.ArgumentTypeError(message) from None
    if not value:
        raise argparse.ArgumentTypeError("a stop text cannot be empty")
    check_text(value, repr(text))
    return value


def check_text(value: str, what: str) -> None:
    """Refuse what is not text: a lone surrogate, from a \\ud800 escape or from bytes that are not
    UTF-8 in a command-line argument (Python keeps each such byte as a surrogate, U+DC80..U+DCFF)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        if 0xDC80 <= ord(value[e.start]) <= 0xDCFF:
            problem = f"the byte 0x{ord(value[e.start]) - 0xDC00:02x} is not UTF-8"
            hint = "check your terminal's or shell's encoding (a UTF-8 locale)"
        else:
            problem, hint = f"{value[e.start]!r} is a lone surrogate", "write the character itself"
        raise argparse.ArgumentTypeError(f"{what}: {problem}, at character {e.start + 1}; {hint}") from None


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
    sampling("--temperature", type=temperature, default=0.0, help="0: greedy; higher: more random")
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
    batch("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
          help="run --prompts_file or a corpus --score on a Ray cluster: 'auto', a head's host:port, or, "
               "with no address, a local one (pip install -r requirements-ray.txt)")
    batch("--ray_workers", type=positive_int, default=None, metavar="N",
          help="with --ray: how many workers (default: the cluster's CPUs / --threads)")
    scoring = parser.add_argument_group("scoring a text").add_argument
    scoring("--score", metavar="PATH",
            help="print the average negative log-likelihood and perplexity of PATH's text ('-': standard input)")
    scoring("--stride", type=positive_int, default=None,
            help="for texts longer than n_ctx, how far the window moves; below n_ctx (default: n_ctx // 2)")
    scoring("--json", action="store_true", help="with --score: print JSON, with every token's log-probability")
    serving = parser.add_argument_group("serving (an OpenAI-compatible completions API)").add_argument
    serving("--serve", action="store_true", help="serve /v1/completions and a playground at / until Ctrl-C")
    serving("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1: this machine only)")
    serving("--port", type=non_negative_int, default=8000, help="the port to listen on (0: any free one)")
    serving("--api_key", metavar="KEY", default=None,
            help="require 'Authorization: Bearer KEY' on /v1 and the tokenizer routes")
    serving("--max_batch", type=positive_int, default=32, metavar="N", help="the most rows in flight; the rest wait")
    serving("--max_queue", type=positive_int, default=256, metavar="N",
            help="the most rows waiting; beyond it, requests get 429 with Retry-After")
    serving("--cors_origin", metavar="ORIGIN", default=None,
            help="allow browser pages from this origin to call the API (default: no CORS)")
    inside = parser.add_argument_group("looking inside").add_argument
    inside("--info", action="store_true", help="print the model card (sizes, parameters, costs) and exit")
    inside("--explain", metavar="PATH.html",
           help="with a prompt: also write a self-contained HTML report (tokens, top 10s, attention, logit lens); "
                "with --score: a page of the text coloured by each token's rank, with its top 10s")
    inside("--timing", action="store_true",
           help="with a prompt: print load, prompt-pass and decode times and decode's memory bandwidth on stderr")
    return parser


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The generation options as the engine's request settings, checked there (with the option's name)."""
    options = {"max_tokens": args.n_tokens_to_generate, "temperature": args.temperature, "top_p": args.top_p,
               "top_k": args.top_k, "stop": tuple(args.stop or ()), "seed": args.seed,
               "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
               "repetition_penalty": args.repetition_penalty, "ignore_eos": args.ignore_eos,
               "context_keep": args.context_keep}
    try:
        return Settings(**options)
    except SettingsError as e:
        field, _, message = str(e).partition(": ")
        option = "--n_tokens_to_generate" if field == "max_tokens" else f"--{field}"
        parser.error(f"argument {option}: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompt is not None:
        try:
            check_text(args.prompt, "the prompt")
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    corpus_file = args.score if args.score and args.score.lower().endswith((".jsonl", ".ndjson")) else None
    if corpus_file and args.explain:
        parser.error("--explain goes with --score of one text, not of a .jsonl corpus")
    modes = (args.prompt is not None) + (args.prompts_file is not None) + (args.score is not None) + args.info
    if modes + args.serve != 1:
        parser.error("give exactly one of: a prompt, --prompts_file PATH, --score PATH, --info, --serve")
    for option in ("host", "port", "api_key", "max_batch", "max_queue", "cors_origin"):
        if getattr(args, option) != parser.get_default(option) and not args.serve:
            parser.error(f"--{option} goes with --serve")
    for option, value, needs, mode in [
        ("--output", args.output, "--prompts_file or --score FILE.jsonl", args.prompts_file or corpus_file),
        ("--json", args.json, "--score", args.score),
        ("--ray", args.ray is not None, "--prompts_file or --score FILE.jsonl", args.prompts_file or corpus_file),
        ("--ray_workers", args.ray_workers, "--ray", args.ray),
        ("--stride", args.stride, "--score", args.score),
        ("--show_probs", args.show_probs, "a single prompt", args.prompt),
        ("--explain", args.explain, "a single prompt or --score", args.prompt if args.score is None else args.score),
        ("--timing", args.timing, "a single prompt", args.prompt),
    ]:
        if value and mode is None:
            parser.error(f"{option} goes with {needs}")
    for option, value in (("--models_dir", args.models_dir), ("--base_url", args.base_url)):
        if args.model is not None and value is not None:
            parser.error(f"{option} goes with --model_size, not with --model")
    args.settings = settings_from_args(parser, args)
    if args.score is not None:
        generating_only = [("--stop", args.stop), ("--repetition_penalty", args.repetition_penalty != 1),
                           ("--frequency_penalty", args.frequency_penalty),
                           ("--presence_penalty", args.presence_penalty), ("--context_keep", args.context_keep)]
        for option, value in generating_only:
            if value:
                parser.error(f"{option} goes with a prompt or --prompts_file, not --score")
    return args
