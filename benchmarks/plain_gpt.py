"""The plain PyTorch GPT the throughput benchmark compares against.

The same architectures as the project's layer specs, written the way a
careful PyTorch user would: fused QKV projection, causal
``scaled_dot_product_attention``, fp32 parameters under bf16 autocast.

* GPT-style (the default): pre-LayerNorm, learned positions, GELU MLP with biases, untied output layer;
* Llama-style (``llama=True``): RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention
  (``kv_heads``), no biases, tied embeddings.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, *, llama: bool = False, kv_heads: int | None = None):
        super().__init__()
        self.heads, self.kv_heads, self.llama = heads, kv_heads or heads, llama
        self.head_dim = hidden // heads
        norm = nn.RMSNorm if llama else nn.LayerNorm
        self.ln1, self.ln2 = norm(hidden), norm(hidden)
        qkv = (heads + 2 * self.kv_heads) * self.head_dim
        self.qkv, self.proj = nn.Linear(hidden, qkv, bias=not llama), nn.Linear(hidden, hidden, bias=not llama)
        self.fc1 = nn.Linear(hidden, 2 * ffn if llama else ffn, bias=not llama)
        self.fc2 = nn.Linear(ffn, hidden, bias=not llama)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, s, h = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, s, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, h))
        if self.llama:
            gate, up = self.fc1(self.ln2(x)).chunk(2, dim=-1)
            return x + self.fc2(F.silu(gate) * up)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, *, layers: int, hidden: int, heads: int, ffn: int, vocab: int, seq: int, llama: bool = False,
                 kv_heads: int | None = None, rope_base: float = 500000.0):
        super().__init__()
        self.llama = llama
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = None if llama else nn.Embedding(seq, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn, llama=llama, kv_heads=kv_heads) for _ in range(layers))
        self.ln_f = nn.RMSNorm(hidden) if llama else nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        if llama:
            self.head.weight = self.tok.weight
            dim = hidden // heads
            inv = 1.0 / rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
            angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv).repeat(1, 2)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        x = self.tok(tokens)
        rope = None
        if self.llama:
            rope = (self.cos[:s].to(x.dtype), self.sin[:s].to(x.dtype))
        else:
            x = x + self.pos(torch.arange(s, device=tokens.device))
        for block in self.blocks:
            x = block(x, rope)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
