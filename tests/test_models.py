import pytest
import torch

from nlp.models import (
    ConfigError,
    LanguageModel,
    LMConfig,
    SentimentClassifier,
    SentimentConfig,
    Seq2Seq,
    Seq2SeqConfig,
    build_model,
)

V = 40


def lm(**kw):
    torch.manual_seed(0)
    return LanguageModel(LMConfig(vocab_size=V, emb_dim=12, hidden_size=12, **kw)).eval()


def s2s(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, emb_dim=8, enc_hidden=6, dec_hidden=12, enc_layers=2, dec_layers=2)
    return Seq2Seq(Seq2SeqConfig(**{**cfg, **kw})).eval()


def padded_batch():
    src = torch.randint(5, V, (3, 6))
    src_len = torch.tensor([6, 4, 2])
    for b, n in enumerate(src_len):
        src[b, n:] = 0
    return src, src_len


def test_initialisation_orthogonal_xavier_forget_bias():
    m = lm()
    w_hh = m.rnn.weight_hh_l0.detach()
    H = 12
    for gate in w_hh.split(H, 0):
        torch.testing.assert_close(gate @ gate.t(), torch.eye(H), atol=1e-5, rtol=0)
    b = m.rnn.bias_ih_l0.detach() + m.rnn.bias_hh_l0.detach()
    assert torch.equal(b[H:2 * H], torch.ones(H)) and b[:H].abs().sum() == 0


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_lm_step_continues_the_fused_forward(rnn_type):
    m = lm(rnn_type=rnn_type)
    ids = torch.randint(5, V, (1, 8))
    hidden, _ = m(ids)
    lp, state = m.start(ids[:, :5])
    torch.testing.assert_close(lp, m.log_probs(hidden[:, 4]), atol=1e-5, rtol=1e-5)
    for t in range(5, 8):
        lp, state = m.step(ids[:, t], state)
        torch.testing.assert_close(lp, m.log_probs(hidden[:, t]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task,make", [("lm", lambda impl: lm(impl=impl)),
                                       ("chat", lambda impl: s2s(impl=impl)),
                                       ("sentiment", lambda impl: SentimentClassifier(SentimentConfig(
                                           vocab_size=V, emb_dim=8, hidden_size=6, attn_dim=4, impl=impl)).eval())])
def test_cells_implementation_gives_the_fused_outputs(task, make):
    fused, cells = make("fused"), make("cells")
    cells.load_state_dict(fused.state_dict())  # one checkpoint serves both
    src, src_len = padded_batch()
    if task == "lm":
        a, b = fused(src)[0], cells(src)[0]
    elif task == "chat":
        tgt = torch.randint(5, V, (3, 4))
        a, b = fused(src, src_len, tgt)[0], cells(src, src_len, tgt)[0]
    else:
        a, b = fused(src, src_len)["logits"], cells(src, src_len)["logits"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tied_weights_share_the_embedding_and_need_equal_sizes():
    m = lm(tie_weights=True)
    assert m.out.weight is m.embed.weight
    with pytest.raises(ConfigError, match="tied weights need emb_dim == hidden_size"):
        LanguageModel(LMConfig(vocab_size=V, emb_dim=8, hidden_size=12, tie_weights=True))


def test_adaptive_softmax_gives_normalised_log_probs_and_a_loss():
    torch.manual_seed(0)  # hidden 32: each tail cluster keeps a non-empty projection (32 / 4, 32 / 16)
    m = LanguageModel(LMConfig(vocab_size=V, emb_dim=32, hidden_size=32, tie_weights=False,
                               adaptive_cutoffs=[10, 25])).eval()
    ids = torch.randint(5, V, (2, 6))
    lp, _ = m.start(ids)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    loss, n, _ = m.train().loss(ids[:, :-1], ids[:, 1:])
    assert n == 10 and torch.isfinite(loss)


@pytest.mark.parametrize("attention", ["dot", "general", "concat", "additive"])
@pytest.mark.parametrize("input_feeding", [False, True])
def test_seq2seq_step_reproduces_teacher_forcing(attention, input_feeding):
    m = s2s(attention=attention, input_feeding=input_feeding)
    src, src_len = padded_batch()
    tgt = torch.randint(5, V, (3, 5))
    logits, attn = m(src, src_len, tgt)
    assert attn.shape == (3, 5, 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 5))
    assert (attn[2, :, 2:] == 0).all()  # padding of the shortest source is never attended
    state = m.start(src, src_len)
    for t in range(5):
        lp, state = m.step(tgt[:, t], state)
        torch.testing.assert_close(lp, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(state["attn"], attn[:, t], atol=1e-6, rtol=0)


def test_seq2seq_loss_ignores_padding_and_trains():
    m = s2s().train()
    src, src_len = padded_batch()
    tgt_in = torch.tensor([[2, 7, 8, 0], [2, 9, 0, 0], [2, 5, 6, 7]])
    tgt_out = torch.tensor([[7, 8, 3, 0], [9, 3, 0, 0], [5, 6, 7, 3]])
    loss, n = m.loss(src, src_len, tgt_in, tgt_out)
    assert n == 9
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_sentiment_attention_is_zero_on_padding_and_heads_have_shapes():
    m = SentimentClassifier(SentimentConfig(vocab_size=V, emb_dim=8, hidden_size=6, attn_dim=4)).eval()
    src, src_len = padded_batch()
    out = m(src, src_len)
    assert out["logits"].shape == (3, 2) and out["rating"].shape == (3,)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(3))
    assert (out["attention"][1, 4:] == 0).all()


def test_build_model_rejects_unknown_settings():
    with pytest.raises(ConfigError, match="unknown LanguageModel settings"):
        build_model("lm", {"vocab_size": V, "hiden_size": 3})
    with pytest.raises(ConfigError, match="unknown task"):
        build_model("translate", {})


@pytest.mark.parametrize("bidirectional", [False, True])
def test_inference_calls_of_the_fused_rnn_take_turns_and_training_never_waits(bidirectional):
    """oneDNN copies the weights on every fused call: in the app's one process, sessions' inference calls take
    turns so that only one copy exists at a time; a training call (gradients on) does not wait."""
    import threading

    from nlp import cpu_serving
    from nlp import rnn as rnn_mod

    rnn = rnn_mod.make_rnn("lstm", "fused", 8, 8, 2, 0.0, bidirectional=bidirectional)
    x, lengths = torch.randn(2, 5, 8), torch.tensor([5, 3])

    def call():
        if bidirectional:
            return rnn_mod.run_bidirectional_unpacked(rnn, x, lengths)
        return rnn_mod.run_rnn(rnn, x)[0]

    def in_thread(grad: bool) -> threading.Event:
        done = threading.Event()

        def run():
            with torch.set_grad_enabled(grad):
                call()
            done.set()
        threading.Thread(target=run, daemon=True).start()
        return done

    expected = call().detach()
    with cpu_serving._FUSED_CPU_INFERENCE:  # another session's call in progress
        training, inference = in_thread(True), in_thread(False)
        assert training.wait(30)            # training went ahead
        assert not inference.wait(1.0)      # inference waits for its turn
    assert inference.wait(30)
    with torch.no_grad():  # (oneDNN's inference kernels differ from its training ones in the last bits)
        torch.testing.assert_close(call(), expected)


def test_transposed_weights_keep_every_output_and_leave_bidirectional_encoders():
    import copy

    from nlp.cpu_serving import transposed_weights
    from nlp.decoding import prime

    ids = torch.randint(5, V, (7,)).tolist()
    for model in (lm(), s2s()):
        served = transposed_weights(copy.deepcopy(model))
        stepped = served.rnn if isinstance(model, LanguageModel) else served.decoder
        assert all(p.t().is_contiguous() and not p.is_contiguous()
                   for n, p in stepped.named_parameters() if n.startswith("weight"))
        if isinstance(model, Seq2Seq):
            assert all(p.is_contiguous() for p in served.encoder.parameters())
        with torch.no_grad():
            (lp_a, st_a), (lp_b, st_b) = prime(model, ids), prime(served, ids)  # a fused pass (and a step)
            torch.testing.assert_close(lp_b, lp_a)
            torch.testing.assert_close(served.step(torch.tensor([9]), st_b)[0], model.step(torch.tensor([9]), st_a)[0])


def test_packed_steps_match_the_layer_by_layer_step_and_bfloat16_stays_close():
    """half_step_weights: in float32 the packed [W_ih | W_hh] step is the same computation as the layer-by-layer
    one; in bfloat16 (emulated where the CPU has no native support, so this runs anywhere) the log-probs move
    by a little and the states stay float32. The chat model's decoder gets packed weights; only an LM's output
    layer gets a half copy."""
    import copy

    from nlp.cpu_serving import half_step_weights
    from nlp.decoding import prime

    ids = torch.randint(5, V, (7,)).tolist()
    for model in (lm(), s2s()):
        model.eval()
        exact = half_step_weights(copy.deepcopy(model), torch.float32)
        half = half_step_weights(copy.deepcopy(model))
        stack = half.rnn if isinstance(model, LanguageModel) else half.decoder
        assert [w.dtype for w, _ in stack.step_weights] == [torch.bfloat16] * stack.num_layers
        assert hasattr(half.out, "step_weight") == isinstance(model, LanguageModel)
        with torch.no_grad():
            (_, st), (_, st_exact), (_, st_half) = prime(model, ids), prime(exact, ids), prime(half, ids)
            lp, st = model.step(torch.tensor([9]), st)
            lp_exact, st_exact = exact.step(torch.tensor([9]), st_exact)
            lp_half, st_half = half.step(torch.tensor([9]), st_half)
        torch.testing.assert_close(lp_exact, lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(st_exact["h"], st["h"], rtol=1e-5, atol=1e-5)
        assert st_half["h"].dtype == st_half["c"].dtype == lp_half.dtype == torch.float32
        assert float((lp_half - lp).abs().max()) < 0.1 and float((lp_half - lp).abs().max()) > 0


def test_open_checkpoint_uses_half_steps_only_for_a_language_model_on_native_bfloat16(trained, monkeypatch):
    from nlp import serve

    for native in (True, False):
        monkeypatch.setattr(serve, "cpu_has_native_bf16", lambda native=native: native)
        lm_ck, chat_ck = serve.open_checkpoint(trained["lm"], "lm"), serve.open_checkpoint(trained["chat"], "chat")
        assert hasattr(lm_ck.model.rnn, "step_weights") == native
        assert not hasattr(chat_ck.model.decoder, "step_weights")
        assert not hasattr(serve.open_checkpoint(trained["lm"], "lm", half_steps=False).model.rnn, "step_weights")
