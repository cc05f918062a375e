"""Named configurations for the rows of the seed deck's "MoE Experts Design" table.

Models with a Hugging Face release (Mixtral, Qwen1.5-MoE, DBRX, DeepSeekMoE) are
built from their published config.json values through the normal loader, so they
use the family's real weight names. The others (GShard, Switch, GLaM,
DeepSpeed-MoE, PR-MoE, ST-MoE) are ``generic`` configs built from the table's
columns plus the papers' vocabulary sizes; their weights use the
``model.layers.{i}.mlp.*`` names. ``seed_total`` / ``seed_active`` are the counts the
seed states, which ``info`` is tested against (docs/frontend.md lists the rows whose
stated figure is coarser than 2%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .configs import Arch, Attention, ConfigError, MoEConfig, from_hf_dict

__all__ = ["PRESETS", "Preset", "get_preset", "preset_names"]


@dataclass(frozen=True)
class Preset:
    name: str
    row: str  # the seed table row it reproduces
    seed_total: float  # parameters the seed states
    seed_active: float | None  # active parameters the seed states (None: not stated)
    tolerance: float  # relative tolerance the stated figure supports (its rounding)
    build: Callable[[], MoEConfig]
    note: str = ""


def _hf(d: dict[str, Any], name: str) -> Callable[[], MoEConfig]:
    return lambda: from_hf_dict(d, source=f"preset {name}", name=name)


def _generic(name: str, *, d: int, layers: int, every: int, experts: int | list[int],
             top_k: int, f: int, act: str, heads: int, head_dim: int, vocab: int,
             tie: bool = True, decoder_layers: int = 0, dense_f: int | None = None,
             learned_positions: int = 0, gpt_biases: bool = False, shared: int = 0,
             extra_dense: bool = False, capacity_factor: float = 0.0,
             relative_buckets: int = 0, aux: float = 0.0, z: float = 0.0,
             notes: tuple[str, ...] = ()) -> Callable[[], MoEConfig]:
    """A table row as a config: MoE in every ``every``-th layer (the last of each block)."""

    def stack(n: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        moe = [i for i in range(n) if i % every == every - 1]
        per = experts if isinstance(experts, list) else [experts] * len(moe)
        if len(per) != len(moe):
            raise ConfigError(f"preset {name}: {len(per)} expert counts for {len(moe)} "
                              "MoE layers")
        kinds = ["dense"] * n
        counts = [0] * n
        for i, e in zip(moe, per):
            kinds[i] = "moe+dense" if extra_dense else "moe"
            counts[i] = e
        return tuple(kinds), tuple(counts)

    def build() -> MoEConfig:
        kinds, counts = stack(layers)
        dkinds, dcounts = stack(decoder_layers) if decoder_layers else ((), ())
        cfg = MoEConfig(
            name=name, family="generic", hidden_size=d, layer_kinds=kinds,
            layer_experts=counts, top_k=top_k, moe_intermediate_size=f,
            dense_intermediate_size=dense_f or f, activation=act,
            score_func="softmax", renormalize=top_k > 1, capacity_factor=capacity_factor,
            # GPT style: LayerNorm with bias (torch's default eps); T5 style: RMSNorm.
            norm="layernorm" if gpt_biases else "rmsnorm", norm_bias=gpt_biases,
            norm_eps=1e-5 if gpt_biases else 1e-6,
            num_shared_experts=1 if shared else 0, shared_intermediate_size=shared,
            published_aux_loss_coeff=aux, published_z_loss_coeff=z,
            arch=Arch(vocab_size=vocab, tie_embeddings=tie,
                      learned_positions=learned_positions,
                      attention=Attention(num_heads=heads, num_kv_heads=heads,
                                          head_dim=head_dim, qkv_bias=gpt_biases,
                                          out_bias=gpt_biases,
                                          relative_buckets=relative_buckets),
                      norm_bias=gpt_biases, ffn_bias=gpt_biases,
                      decoder_layer_kinds=dkinds, decoder_layer_experts=dcounts),
            notes=notes)
        cfg.validate()
        return cfg

    return build


_MIXTRAL_8X7B = {
    "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
    "router_aux_loss_coef": 0.02,
}
_MIXTRAL_8X22B = dict(_MIXTRAL_8X7B, hidden_size=6144, intermediate_size=16384,
                      num_hidden_layers=56, num_attention_heads=48, router_aux_loss_coef=0.001)
_QWEN15_MOE = {
    "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
    "num_experts": 60, "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "norm_topk_prob": False,
    "decoder_sparse_step": 1, "vocab_size": 151936, "rms_norm_eps": 1e-6,
    "hidden_act": "silu", "tie_word_embeddings": False, "router_aux_loss_coef": 0.001,
}
_DBRX = {
    "model_type": "dbrx", "d_model": 6144, "n_heads": 48, "n_layers": 40,
    "vocab_size": 100352, "tie_word_embeddings": False,
    "attn_config": {"kv_n_heads": 8, "clip_qkv": 8, "rope_theta": 500000},
    "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4,
                   "moe_loss_weight": 0.05},
}
_DEEPSEEK_MOE_16B = {  # deepseek-ai/deepseek-moe-16b-base
    "model_type": "deepseek", "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "norm_topk_prob": False, "scoring_func": "softmax", "aux_loss_alpha": 0.001,
    "vocab_size": 102400, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False,
}

_T5_VOCAB = 32128
_PRESETS = [
    Preset("gshard-600b", "GShard 600B: 2/2048, 1024/8192, 36L, 1/2, ReLU", 600e9, None, 0.05,
           _generic("gshard-600b", d=1024, layers=18, decoder_layers=18, every=2,
                    experts=2048, top_k=2, f=8192, act="relu", heads=16, head_dim=128,
                    vocab=64000, capacity_factor=1.0, aux=0.01),
           "36 layers = 18 encoder + 18 decoder; 18 MoE layers hold 618B of experts, "
           "so the stated 600B is rounded to one significant digit"),
    Preset("switch-base-128", "Switch 7B: 1/128, 768/2048, 12L, 1/2, GEGLU", 7e9, None, 0.08,
           _generic("switch-base-128", d=768, layers=12, decoder_layers=12, every=2,
                    experts=128, top_k=1, f=2048, act="geglu", heads=12, head_dim=64,
                    vocab=_T5_VOCAB, tie=False, capacity_factor=1.25, relative_buckets=32,
                    aux=0.01),
           "12 encoder + 12 decoder layers; 7.4B counted, the stated 7B has one digit"),
    Preset("switch-c-2048", "Switch 1571B: 1/2048, 2080/6144, 15L, 1, ReLU", 1571e9, None,
           0.02,
           _generic("switch-c-2048", d=2080, layers=15, decoder_layers=15, every=1,
                    experts=2048, top_k=1, f=6144, act="relu", heads=32, head_dim=64,
                    vocab=_T5_VOCAB, tie=False, capacity_factor=1.25, relative_buckets=32,
                    aux=0.01)),
    Preset("glam-64b-64e", "GLaM 64B/1.2T: 2/64, 8192/32768, 64L, 1/2, GEGLU", 1.2e12, None,
           0.05,
           _generic("glam-64b-64e", d=8192, layers=64, every=2, experts=64, top_k=2,
                    f=32768, act="gelu", heads=128, head_dim=128, vocab=256000, aux=0.01,
                    notes=("FFNs counted with two matrices: GLaM's published totals "
                           "(1.9B, 27B, 143B, 1.2T) only add up that way",)),
           "1.15T counted; the stated 1.2T has two digits (GLaM's own smaller rows match "
           "within 2% with the same convention)"),
    Preset("deepspeed-moe-1.3b-128", "DeepSpeed-MoE 1.3B+MoE-128 (52B): 24L, 2048, 1/2, GeLU",
           52e9, 1.3e9, 0.02,
           _generic("deepspeed-moe-1.3b-128", d=2048, layers=24, every=2, experts=128,
                    top_k=1, f=8192, act="gelu", heads=16, head_dim=128, vocab=50257,
                    learned_positions=2048, gpt_biases=True, aux=0.01,
                    notes=("top-1 gating: the table's 2/128 is not what its 1.3B active "
                           "count (or the DeepSpeed-MoE paper) uses",))),
    Preset("pr-moe-1.3b-64-128", "PR-MoE 1.3B+PR-MoE-64/128 (31B): 10L-64E, 2L-128E, +1 shared",
           31e9, None, 0.02,
           _generic("pr-moe-1.3b-64-128", d=2048, layers=24, every=2,
                    experts=[64] * 10 + [128] * 2, top_k=1, f=8192, act="gelu", heads=16,
                    head_dim=128, vocab=50257, learned_positions=2048, gpt_biases=True,
                    shared=8192, aux=0.01,
                    notes=("pyramid: the last 2 MoE layers have 128 experts, the first 10 "
                           "have 64; the residual expert is a shared expert",))),
    Preset("st-moe-32b", "ST-MoE 32B/269B: 2/64, 5120/20480, 27L, 1/4 + extra FFN, GEGLU",
           269e9, None, 0.02,
           _generic("st-moe-32b", d=5120, layers=27, decoder_layers=27, every=4, experts=64,
                    top_k=2, f=20480, act="geglu", heads=64, head_dim=128, vocab=_T5_VOCAB,
                    tie=False, extra_dense=True, capacity_factor=1.25, relative_buckets=32,
                    aux=0.01, z=0.001),
           "27 encoder + 27 decoder layers, a sparse FFN plus a dense one in every 4th; "
           "the stated 32B is the FLOP-matched dense model's size, not an active count "
           "(38.5B counted)"),
    Preset("mixtral-8x7b", "Mixtral 13B/47B: 2/8, 4096/14336, 32L, SwiGLU", 47e9, 13e9, 0.02,
           _hf(_MIXTRAL_8X7B, "mixtral-8x7b")),
    Preset("mixtral-8x22b", "Mixtral 39B/141B: 2/8, 6144/16384, 56L, SwiGLU", 141e9, 39e9,
           0.02, _hf(_MIXTRAL_8X22B, "mixtral-8x22b")),
    Preset("deepseekmoe-16b", "DeepSeekMoE 2.8B/16.4B: 6+2/66, 2048/1408, 28L", 16.4e9, 2.8e9,
           0.02, _hf(_DEEPSEEK_MOE_16B, "deepseekmoe-16b")),
    Preset("qwen1.5-moe-a2.7b", "Qwen1.5-MoE 2.7B/14.3B: 4+4/64, 2048/1408, 24L", 14.3e9,
           2.7e9, 0.02, _hf(_QWEN15_MOE, "qwen1.5-moe-a2.7b")),
    Preset("dbrx", "DBRX 36B/132B: 4/16, 6144/10752, 40L, SwiGLU", 132e9, 36e9, 0.02,
           _hf(_DBRX, "dbrx")),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> MoEConfig:
    """The config of preset ``name`` (ConfigError naming the choices if unknown)."""
    try:
        return PRESETS[name].build()
    except KeyError:
        raise ConfigError(f"preset: unknown name {name!r} (choices: "
                          f"{', '.join(PRESETS)})") from None
