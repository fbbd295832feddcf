#!/usr/bin/python3
"""PyTorch peer of `deno task bench`: times the same training steps on CPU (or, with --device cuda,
on an NVIDIA GPU for `deno task bench --gpu`).

Cases (shapes from SPEC.md §2 and §4):
  sae_topk_step   one TopK SAE step on x[16384, 64] (seeded standard normal), 512 features, k = 10:
                  f = topk-scatter(relu((x - b_dec) @ W_enc + b_enc)), x_hat = f @ W_dec + b_dec,
                  loss = ((x_hat - x)^2).sum(-1).mean(), backward, Adam(lr 1e-3) step, zero_grad.
  sae_staircase_step  one step of a Staircase chain of two SAEs (as at mlp-block): one shared
                  dictionary of 1,024 features (W_enc [64, 1024], W_dec [1024, 64]); the first SAE
                  uses its first 512, the second all 1,024, each with its own biases and its own
                  x[16384, 64]; k = 10; the two losses summed, then as above.
  sae_jsae_step   one JSAE step: TopK SAEs (512 features, k = 10) at an MLP's input and output
                  (x_in, x_out [16384, 64]) and the Jacobian loss λ·Σ|J|/k² (λ = 1e-4) through the
                  MLP (W_fc [64, 256], W_proj [256, 64]): A = W_dec_in @ W_fc, Bt = (W_proj @
                  W_enc_out)^T, J = Bt[K2] @ (A[K1] * GELU'(z))^T per token, K = TopK indices.
  gpt_train_step  one step of the toy GPT `shakespeare_64x4` on batch x 128 seeded random tokens:
                  cross-entropy, backward, grad clipping to 1.0, AdamW(1e-3, (0.9, 0.95), wd 0.1).
  sgemm_ceiling   (--serve only) torch.mm of the SAE encoder's shape, [16384, 64] @ [64, 512], into
                  a reused output as ours writes one: the peer's BLAS beside ours, so that a step
                  ratio far above this one is read as the peer's other costs (on a VM where fresh
                  pages are dear, each step's newly allocated 32 MB tensors: 2026-12-06, ~90 ms each).
  attribution_mlp_block, attribution_block  (--serve only) SCALAR edge attribution of one toy pair
                  (layer 1; 512 x 512 TopK features, k 10, random weights) as the authors compute
                  it: one backward pass per target feature and IG step (5) over a batch of 6
                  sequences x 128 tokens, on a sample of 8 of the 512 targets; the time is scaled
                  by 512 / 8, so a step stands for every target of the 6 sequences.

Each case warms up for 3 steps, then times --reps steps with time.perf_counter and reports the
median and the minimum in ms. Thread count is torch's default unless --threads is given. On CUDA
the data and model live on the GPU and each timed step ends with torch.cuda.synchronize(), so a
step's time is the GPU's, not the launch queue's.

Usage: /usr/bin/python3 tests/bench/peer_torch.py [--case sae|gpt|all] [--reps 10] [--batch 32]
                                                 [--threads N] [--device cpu|cuda] [--json]
       /usr/bin/python3 tests/bench/peer_torch.py --serve [--threads N]
With --serve it reads case names from stdin, one per line, and answers each with one timed step
as a JSON line {"name", "ms"} (a case is built and warmed up at its first request): the caller
interleaves these steps with its own (A B A B), so both see the same machine load.
Exits 3 (peer skipped) when torch cannot be imported, or --device cuda has no CUDA device.
"""

import argparse
import json
import math
import statistics
import sys
import time

WARMUP_STEPS = 3
SEED = 0


def import_torch():
    try:
        import torch
    except ImportError as err:
        print(f"peer_torch: PyTorch not available ({err}); peer skipped", file=sys.stderr)
        sys.exit(3)
    return torch


torch = import_torch()
nn = torch.nn
F = nn.functional


def time_steps(step, reps, device):
    """Runs `step` WARMUP_STEPS times untimed, then `reps` times; returns (median_ms, min_ms)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(WARMUP_STEPS):
        step()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


# ---------------------------------------------------------------- TopK SAE


class TopKSAE(nn.Module):
    def __init__(self, d_in, n_features, k):
        super().__init__()
        self.k = k
        w_dec = torch.empty(n_features, d_in)
        nn.init.kaiming_uniform_(w_dec)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        pre = F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter(-1, indices, values)
        return f @ self.W_dec + self.b_dec


def sae_step_fn(device, tokens=16384, d_in=64, n_features=512, k=10):
    torch.manual_seed(SEED)
    x = torch.randn(tokens, d_in).to(device)
    sae = TopKSAE(d_in, n_features, k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)

    def step():
        loss = ((sae(x) - x) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    detail = f"x[{tokens},{d_in}] -> {n_features}, k={k}, topk+scatter, dense decode, Adam"
    return step, detail


def topk_features(pre, k):
    values, indices = F.relu(pre).topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values), indices


def staircase_step_fn(device, tokens=16384, d_in=64, chunk=512, k=10):
    torch.manual_seed(SEED)
    xs = [torch.randn(tokens, d_in).to(device) for _ in range(2)]
    w_dec = torch.empty(2 * chunk, d_in)
    nn.init.kaiming_uniform_(w_dec)
    params = {"W_dec": nn.Parameter(w_dec.to(device)),
              "W_enc": nn.Parameter(w_dec.t().clone().to(device))}
    for j in range(2):
        params[f"b_enc{j}"] = nn.Parameter(torch.zeros((j + 1) * chunk, device=device))
        params[f"b_dec{j}"] = nn.Parameter(torch.zeros(d_in, device=device))
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def step():
        loss = 0
        for j, x in enumerate(xs):
            width = (j + 1) * chunk
            pre = (x - params[f"b_dec{j}"]) @ params["W_enc"][:, :width] + params[f"b_enc{j}"]
            f, _ = topk_features(pre, k)
            x_hat = f @ params["W_dec"][:width] + params[f"b_dec{j}"]
            loss = loss + ((x_hat - x) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, f"2 x [{tokens},{d_in}] -> {chunk}/{2 * chunk} shared features, k={k}, Adam"


def jsae_step_fn(device, tokens=16384, d_in=64, n_features=512, d_mlp=256, k=10, lam=1e-4):
    torch.manual_seed(SEED)
    x_in, x_out = (torch.randn(tokens, d_in).to(device) for _ in range(2))
    sae_in, sae_out = (TopKSAE(d_in, n_features, k).to(device) for _ in range(2))
    w_fc = (torch.randn(d_in, d_mlp) * 0.1).to(device)
    b_fc = torch.zeros(d_mlp, device=device)
    w_proj = (torch.randn(d_mlp, d_in) * 0.1).to(device)
    opt = torch.optim.Adam([*sae_in.parameters(), *sae_out.parameters()], lr=1e-3)

    def encode(sae, x):
        return topk_features((x - sae.b_dec) @ sae.W_enc + sae.b_enc, k)

    def step():
        f_in, k1 = encode(sae_in, x_in)
        f_out, k2 = encode(sae_out, x_out)
        loss = ((f_in @ sae_in.W_dec + sae_in.b_dec - x_in) ** 2).sum(-1).mean()
        loss = loss + ((f_out @ sae_out.W_dec + sae_out.b_dec - x_out) ** 2).sum(-1).mean()
        with torch.no_grad():
            z = x_in @ w_fc + b_fc
            u = math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)
            t = torch.tanh(u)
            gelu_grad = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * math.sqrt(2 / math.pi) * (
                1 + 3 * 0.044715 * z * z)
        a = sae_in.W_dec @ w_fc
        bt = (w_proj @ sae_out.W_enc).t()
        j = bt[k2] @ (a[k1] * gelu_grad[:, None, :]).transpose(1, 2)
        loss = loss + lam * j.abs().sum() / (k * k)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, (f"2 x [{tokens},{d_in}] -> {n_features}, k={k}, Jacobian through an MLP of "
                  f"{d_mlp}, Adam")


# ---------------------------------------------------------------- toy GPT


class Block(nn.Module):
    def __init__(self, d, n_head, d_mlp, attention):
        super().__init__()
        self.n_head = n_head
        self.attention = attention
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp_in = nn.Linear(d, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d)

    def attend(self, x):
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
            for z in self.qkv(x).split(d, dim=-1)
        )
        y = self.attention(q, k, v)
        return self.attn_out(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attend(self.ln_1(x))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_2(x)), approximate="tanh"))


def explicit_attention(q, k, v):
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(causal, float("-inf")).softmax(-1) @ v


def sdpa_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class ToyGPT(nn.Module):
    def __init__(self, attention, vocab=128, ctx=128, d=64, n_layer=4, n_head=4, d_mlp=256):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, n_head, d_mlp, attention) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.init_weights(n_layer)

    def init_weights(self, n_layer):
        """N(0, 0.02) weights, zero biases; residual projections scaled by (2 n_layer)^-0.5."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn_out, block.mlp_out):
                nn.init.normal_(proj.weight, 0.0, 0.02 * (2 * n_layer) ** -0.5)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()  # tied LM head


def gpt_step_fn(batch, attention, device, ctx=128, vocab=128):
    torch.manual_seed(SEED)
    model = ToyGPT(attention, vocab=vocab, ctx=ctx).to(device)
    data = torch.randint(0, vocab, (batch, ctx + 1)).to(device)
    inputs, targets = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    n_params = sum(p.numel() for p in model.parameters())
    return step, f"{n_params} params, batch {batch}x{ctx}, AdamW, clip 1.0"


def bench_gpt(batch, reps, device):
    """Times explicit attention and, when this torch has it, SDPA; returns the faster."""
    variants = {"explicit softmax attention": explicit_attention}
    if hasattr(F, "scaled_dot_product_attention"):
        variants["F.scaled_dot_product_attention"] = sdpa_attention
    results = []
    for label, attention in variants.items():
        step, detail = gpt_step_fn(batch, attention, device)
        median, fastest = time_steps(step, reps, device)
        results.append((median, fastest, label, detail))
    median, fastest, label, detail = min(results)
    if len(results) == 1:
        note = f"no F.scaled_dot_product_attention in torch {torch.__version__}"
    else:
        note = "faster of " + ", ".join(f"{lab} {med:.1f} ms" for med, _, lab, _ in results)
    return median, fastest, f"{detail}, {label} ({note})"


def attribution_step_fn(position, device, sequences=6, steps=5, sample=8, features=512, k=10):
    """The reference's per-target IG loop (SPEC §5) on a sample of targets; returns (step, scale)."""
    torch.manual_seed(SEED)
    model = ToyGPT(sdpa_attention if hasattr(F, "scaled_dot_product_attention")
                   else explicit_attention).to(device)
    model.requires_grad_(False)
    up, down = (TopKSAE(64, features, k).to(device).requires_grad_(False) for _ in range(2))
    tokens = torch.randint(0, 128, (sequences, 128)).to(device)
    block = model.blocks[1]

    def encode(sae, x):
        return topk_features((x - sae.b_dec) @ sae.W_enc + sae.b_enc, k)[0]

    def segment(x):  # mlp-block: ln_2 + MLP + skip; block: the whole block
        if position == "block":
            return block(x)
        return x + block.mlp_out(F.gelu(block.mlp_in(block.ln_2(x)), approximate="tanh"))

    with torch.no_grad():
        x = model.wte(tokens) + model.wpe(torch.arange(128, device=device))
        x = model.blocks[0](x)
        if position == "mlp-block":
            x = x + block.attend(block.ln_1(x))
        z0 = encode(up, x)
        step_length = z0.norm(dim=-1, keepdim=True) / steps
    targets = [m * features // sample for m in range(sample)]

    def step():
        for j in targets:
            integral = torch.zeros_like(z0)
            for alpha in torch.linspace(0, 1, steps).tolist():
                z = (alpha * z0).requires_grad_()
                y = encode(down, segment(z @ up.W_dec + up.b_dec))
                direction = torch.zeros_like(y)
                direction[..., j] = 1
                y.backward(direction)
                integral += z.grad * step_length
            (integral ** 2).sum(dim=(0, 1))

    return step, features / sample


def sgemm_step_fn(tokens=16384, d_in=64, n_features=512):
    torch.manual_seed(SEED)
    x, w = torch.randn(tokens, d_in), torch.randn(d_in, n_features)
    out = torch.empty(tokens, n_features)
    return lambda: torch.mm(x, w, out=out)


def bench_sae(make, reps, device):
    step, detail = make(device)
    median, fastest = time_steps(step, reps, device)
    return median, fastest, detail


SAE_CASES = {
    "sae_topk_step": sae_step_fn,
    "sae_staircase_step": staircase_step_fn,
    "sae_jsae_step": jsae_step_fn,
}


# The cases --serve answers: name -> () -> (step, factor its time is scaled by).
SERVE_CASES = {
    **{name: (lambda make=make: (make("cpu")[0], 1)) for name, make in SAE_CASES.items()},
    "gpt_train_step": lambda: (gpt_step_fn(
        32, sdpa_attention if hasattr(F, "scaled_dot_product_attention") else explicit_attention,
        "cpu")[0], 1),
    "sgemm_ceiling": lambda: (sgemm_step_fn(), 1),
    "attribution_mlp_block": lambda: attribution_step_fn("mlp-block", "cpu"),
    "attribution_block": lambda: attribution_step_fn("block", "cpu"),
}


def serve():
    """Answers each case name read from stdin with one timed step (see the module docstring)."""
    steps = {}
    for line in sys.stdin:
        name = line.strip()
        if name not in steps:
            step, scale = SERVE_CASES[name]()
            # Attribution steps take seconds: one warm-up is enough.
            for _ in range(1 if name.startswith("attribution") else WARMUP_STEPS):
                step()
            steps[name] = step, scale
        step, scale = steps[name]
        start = time.perf_counter()
        step()
        ms = (time.perf_counter() - start) * 1000 * scale
        print(json.dumps({"name": name, "ms": round(ms, 3)}), flush=True)


# ---------------------------------------------------------------- CLI


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["sae", "gpt", "all"], default="all")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="GPT batch size (sequences)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--serve", action="store_true",
                        help="time one step per case name read from stdin")
    args = parser.parse_args()
    for name in ("reps", "batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer, got {value}")
    return args


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"peer_torch: torch {torch.__version__} sees no CUDA device; peer skipped",
              file=sys.stderr)
        sys.exit(3)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.serve:
        serve()
        return
    cases = {
        name: (lambda make=make: bench_sae(make, args.reps, args.device))
        for name, make in SAE_CASES.items()
    }
    cases["gpt_train_step"] = lambda: bench_gpt(args.batch, args.reps, args.device)
    if args.case != "all":
        cases = {k: v for k, v in cases.items() if k.startswith(args.case)}
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if not args.json:
        print(f"torch {torch.__version__} on {device}, {threads} CPU thread(s), "
              f"{args.reps} reps after {WARMUP_STEPS} warm-up")
        print(f"{'case':<16} {'median ms':>10} {'min ms':>10}  detail")
    for name, run in cases.items():
        median, fastest, detail = run()
        if args.json:
            record = {"name": name, "peer_ms": round(median, 3), "peer_min_ms": round(fastest, 3),
                      "threads": threads, "device": device, "torch": torch.__version__,
                      "detail": detail}
            print(json.dumps(record), flush=True)
        else:
            print(f"{name:<16} {median:>10.1f} {fastest:>10.1f}  {detail}", flush=True)


if __name__ == "__main__":
    main()
