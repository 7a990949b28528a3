"""How the models run fast and lean on a CPU when serving, apart from what they compute.

- `fused_turn`: the fused RNN's inference calls take turns, one at a time per process (a server's sessions
  share one process, and oneDNN copies each layer's weights on every call).
- `transposed_weights`, `half_step_weights`: the weights a batch-1 decoding step reads, stored in the order BLAS
  streams fastest, and as bfloat16 copies where the CPU multiplies bfloat16 natively.
- `weights_not_drawn`: a model whose weights are loaded next is built without drawing random ones.

Each is inference only and leaves the model computing the same function (tests/test_models.py).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_FUSED_CPU_INFERENCE = threading.RLock()  # re-entrant: sample-and-rank holds it around its own fused calls


@contextmanager
def fused_turn(x: Tensor):
    """Inference calls of the fused RNN on the CPU take turns, one at a time per process.

    oneDNN, which runs the fused LSTM on the CPU, copies each layer's weights into its own layout on every call
    (8 MB a layer for the shipped LM) and frees the copy after. In the app every session runs in a thread of
    one process: 8 sessions pressing Generate at once held 8 copies, +70 MB of peak memory for nothing, since
    each call already spreads over every core with torch's intra-op threads. Training (gradients on) and
    other devices never wait. Sample-and-rank takes one turn for a whole reply (its sampling steps and scoring
    passes), so sessions' rankings do not interleave. (What 8 ranking sessions held at once was mostly MKL's
    per-thread buffers: webapp.__main__.lean_memory frees those.)
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        yield
        return
    with _FUSED_CPU_INFERENCE:
        yield


def transposed_weights(model: nn.Module) -> nn.Module:
    """Store the weights a batch-1 step multiplies as transposes of contiguous (in, out) tensors: same shapes
    and values, another memory order, for inference. At batch 1 a step multiplies one vector by each weight,
    which BLAS streams 2-3x faster in this order (bench/decode_speed.py). That is each nn.Linear (the output
    layer above all, vocabulary x width; tied embeddings share its storage and read the same values) and each
    unidirectional RNN stack, which `step_stack` runs token by token (bidirectional encoders only ever run
    fused). The fused call then works on a contiguous copy of a stack's weights, made per call: a prompt's one
    pass pays it, each later token gains. No memory kept beyond that."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
        elif isinstance(module, nn.RNNBase) and not module.bidirectional:
            for name, p in module.named_parameters():
                if name.startswith("weight_"):
                    p.data = p.data.t().contiguous().t()
    return model


def half_step_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """For token-by-token decoding: each unidirectional fused LSTM stack keeps its layers packed as one
    [W_ih | W_hh] matrix in `dtype` with the summed bias (`step_weights`, read by nlp.cells.step_stack), and a
    language model's output layer a `dtype` copy of its weight (`step_weight`, read by `log_probs`). A step then
    reads half the bytes, in one matrix-vector product a layer instead of two; states, gates and log-probs stay
    float32. The float32 weights stay for prompts (one fused pass) and everything else. Inference only: the
    copies do not follow later changes to the weights. bench/decode_speed.py measures the speed and what it
    does to the log-probabilities."""
    for module in model.modules():
        if isinstance(module, nn.LSTM) and not module.bidirectional and not module.proj_size:
            module.step_weights = [
                (torch.cat([getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")], 1)
                 .detach().to(dtype).contiguous(),
                 (getattr(module, f"bias_ih_l{k}") + getattr(module, f"bias_hh_l{k}")).detach().float())
                for k in range(module.num_layers)]
    if getattr(model, "task", None) == "lm" and not hasattr(model, "adaptive"):
        model.out.step_weight = model.out.weight.detach().to(dtype).contiguous()
    return model


_INIT_FUNCTIONS = threading.Lock()


@contextmanager
def weights_not_drawn():
    """Modules built inside keep the uninitialised memory their weights were allocated with: every public
    function of torch.nn.init (which nn.Linear, nn.LSTM, nn.Embedding and `init_rnn` call) does nothing. For a
    model whose weights are loaded next: drawing them took 0.38 s of the chat model's 0.5 s load. (A model on
    the "meta" device would need no patching, but torch's normal_ on it imports torch._dynamo, 3 s.)

    Those functions are module-wide: builds inside take turns, and another thread that initialises a model
    meanwhile would get undrawn weights too (nothing does in the app, which only loads)."""
    names = [n for n in vars(nn.init) if n.endswith("_") and not n.startswith("_")]
    with _INIT_FUNCTIONS:
        saved = {n: getattr(nn.init, n) for n in names}
        try:
            for n in names:
                setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
            yield
        finally:
            for n, f in saved.items():
                setattr(nn.init, n, f)
