"""The model card (--info): a model's hyperparameters, where its parameters are, and what they cost.

Every count is taken from the arrays themselves (their .size), never from a formula of the
hyperparameters, so it is true of any checkpoint. Nothing here reads the weights' values: with
memory-mapped params the card is instant for every size.
"""
import numpy as np

FLOAT32_BYTES = 4


def block_counts(block: dict) -> dict[str, int]:
    """Parameters of one transformer block, by component."""
    def size(tree: dict) -> int:
        return sum(int(array.size) for key, array in tree.items() if isinstance(array, np.ndarray))

    return {
        "attention c_attn (q, k, v)": size(block["attn"]["c_attn"]),
        "attention c_proj": size(block["attn"]["c_proj"]),
        "MLP c_fc": size(block["mlp"]["c_fc"]),
        "MLP c_proj": size(block["mlp"]["c_proj"]),
        "layer norm ln_1": size(block["ln_1"]),
        "layer norm ln_2": size(block["ln_2"]),
    }


def model_card(hparams: dict, params: dict) -> dict:
    """The card's figures; "total" counts each array once (a tied head is the token embedding)."""
    blocks = [block_counts(block) for block in params["blocks"]]
    per_block = {name: sum(block[name] for block in blocks) for name in blocks[0]}
    head = params.get("lm_head")
    components = {
        "token embedding wte": int(params["wte"].size),
        "position embedding wpe": int(params["wpe"].size),
        **{f"{name} (all {len(blocks)} blocks)": count for name, count in per_block.items()},
        "final layer norm ln_f": sum(int(array.size) for array in params["ln_f"].values()
                                     if isinstance(array, np.ndarray)),
    }
    if head is not None:
        components["output head lm_head (untied)"] = int(head.size)
    total = sum(components.values())
    n_vocab, n_embd, n_layer = params["wte"].shape[0], params["wte"].shape[1], len(blocks)
    matrices = sum(block[name] for block in blocks for name in block if not name.startswith("layer norm"))
    head_size = int(params["wte"].size if head is None else head.size)
    return {
        "hparams": {key: hparams[key] for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer") if key in hparams},
        "components": components,
        "one_block": blocks[0],
        "total": total,
        "total_untied": total if head is not None else total + n_vocab * n_embd,
        "tied": head is None,
        "weight_bytes": total * FLOAT32_BYTES,
        "kv_cache_bytes_per_token": 2 * n_layer * n_embd * FLOAT32_BYTES,  # a key and a value per layer
        # bytes a decode step reads: every block matrix and the head (one row of wte and wpe besides)
        "bytes_read_per_token": (matrices + head_size) * FLOAT32_BYTES,
        # a multiply and an add per weight of the matrices and the head, plus attention's q.k and
        # weights.v over the context: 2 * 2 * n_embd flops per layer per token of context
        "flops_per_token": 2 * (matrices + head_size),
        "attention_flops_per_context_token": 4 * n_layer * n_embd,
    }


def format_card(card: dict, name: str) -> str:
    """The card as text, for --info and the report."""
    lines = [f"model: {name}", "hyperparameters: " + ", ".join(f"{k} {v}" for k, v in card["hparams"].items()), "",
             "parameters"]
    for component, count in card["components"].items():
        lines.append(f"  {component:44}{count:>15,}")
    lines.append(f"  {'total':44}{card['total']:>15,}")
    if card["tied"]:
        lines.append(f"  {'with an untied output head it would be':44}{card['total_untied']:>15,}"
                     "  (the head reuses wte)")
    lines += ["", "one block: " + ", ".join(f"{k} {v:,}" for k, v in card["one_block"].items()), "",
              f"weights in float32: {card['weight_bytes'] / 2**20:,.1f} MiB",
              f"key/value cache per token of context: {card['kv_cache_bytes_per_token'] / 2**10:,.1f} KiB",
              f"a generated token reads {card['bytes_read_per_token'] / 2**20:,.1f} MiB of weights and takes about "
              f"{card['flops_per_token'] / 1e9:,.2f} GFLOP, plus "
              f"{card['attention_flops_per_context_token'] / 1e3:,.0f} kFLOP per token of context for attention"]
    return "\n".join(lines)
