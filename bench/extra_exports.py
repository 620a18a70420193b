"""Small real exports of timm and transformers models, for checking autoinit beyond the bench set.

    EXPORT_PYTHON bench/extra_exports.py OUT NAME...     (an environment with torch, timm, transformers)
    for f in OUT/*.onnx; do onnxinit autoinit $f -o ${f%.onnx}.init.onnx --quiet &&
        onnxinit inspect ${f%.onnx}.init.onnx --measure --batch 8 --json ${f%.onnx}.inspect.json; done
    python bench/extra_exports.py --summary OUT

Used on 2026-12-03 with torch 2.13.0, timm 1.0.29, transformers 4.57.6. timm imports torchvision;
where its wheel has no kernels for the installed torch ("operator torchvision::nms does not
exist"), skipping the fake registrations of missing ops in torchvision/_meta_registrations.py of
that throwaway environment is enough for these exports.

Image models: timm, random init, eval mode (BatchNorm folded where torch.onnx folds it), at the
sizes in SIZES. Text models: transformers configs shrunk to 2-4 layers of width 128, token ids
in [0, 1000) with an all-ones mask. TorchScript exporter, opset 17 (EXPORT_OPSET=N for another), dynamic batch.
"""
import glob
import json
import os
import sys
import time


def summary(folder):
    """Per model: weighted layers measured in [0.5, 2] and in [0.1, 10], and the output variance."""
    for path in sorted(glob.glob(os.path.join(folder, "*.inspect.json"))):
        report = json.load(open(path))
        values = [r["measured"]["var"] for r in report["rows"] if r.get("weighted") and r.get("measured")]
        narrow, wide = sum(0.5 <= v <= 2 for v in values), sum(0.1 <= v <= 10 for v in values)
        output = list(report["summary"]["output_variance"].values())[0]
        print(f"{os.path.basename(path)[:-len('.inspect.json')]}: [0.5, 2] {narrow}/{len(values)}, "
              f"[0.1, 10] {wide}/{len(values)}, output variance {output:.3g}")


if sys.argv[1] == "--summary":
    summary(sys.argv[2])
    sys.exit(0)
import torch  # noqa: E402
torch.manual_seed(0)
out = sys.argv[1]
names = sys.argv[2:]
def timm_model(name, size=224):
    import timm
    try:   # models with a fixed image size (windows, positions) are built for ``size``
        m = timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    except TypeError:
        m = timm.create_model(name, pretrained=False, num_classes=10)
    return m, (torch.randn(2, 3, size, size),), ["x"]
def hf(kind):
    import transformers as T
    ids = torch.randint(0, 1000, (2, 16)); mask = torch.ones(2, 16, dtype=torch.long)
    if kind == "t5":
        cfg = T.T5Config(vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)
        m = T.T5EncoderModel(cfg)
    elif kind == "distilbert":
        m = T.DistilBertModel(T.DistilBertConfig(vocab_size=1000, dim=128, hidden_dim=256, n_layers=2, n_heads=4))
    elif kind == "roberta":
        m = T.RobertaModel(T.RobertaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4))
    elif kind == "albert":
        m = T.AlbertModel(T.AlbertConfig(vocab_size=1000, embedding_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4))
    elif kind == "deberta":
        m = T.DebertaV2Model(T.DebertaV2Config(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4))
    elif kind == "gpt_neo":
        m = T.GPTNeoModel(T.GPTNeoConfig(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8))
    elif kind == "bloom":
        m = T.BloomModel(T.BloomConfig(vocab_size=1000, hidden_size=128, n_layer=2, n_head=4))
    elif kind == "opt":
        m = T.OPTModel(T.OPTConfig(vocab_size=1000, hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=128))
    elif kind == "electra":
        m = T.ElectraModel(T.ElectraConfig(vocab_size=1000, embedding_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4))
    elif kind == "mobilebert":
        m = T.MobileBertModel(T.MobileBertConfig(vocab_size=1000, hidden_size=128, embedding_size=64, intermediate_size=128, intra_bottleneck_size=32, true_hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_feedforward_networks=2))
    elif kind == "squeezebert":
        m = T.SqueezeBertModel(T.SqueezeBertConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, embedding_size=128))
    elif kind == "mpnet":
        m = T.MPNetModel(T.MPNetConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4))
    elif kind == "convbert":
        m = T.ConvBertModel(T.ConvBertConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, embedding_size=128))
    elif kind == "bart":
        m = T.BartModel(T.BartConfig(vocab_size=1000, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256)).encoder
    elif kind == "funnel":
        m = T.FunnelModel(T.FunnelConfig(vocab_size=1000, d_model=128, n_head=4, d_head=32, d_inner=256, block_sizes=[1, 1], num_decoder_layers=1))
    elif kind == "xlnet":
        m = T.XLNetModel(T.XLNetConfig(vocab_size=1000, d_model=128, n_layer=2, n_head=4, d_inner=256))
    elif kind == "segformer":
        m = T.SegformerModel(T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[32, 64], num_attention_heads=[1, 2], decoder_hidden_size=64))
        class W(torch.nn.Module):
            def __init__(s): super().__init__(); s.m = m
            def forward(s, x): return s.m(pixel_values=x).last_hidden_state
        return W(), (torch.randn(2, 3, 64, 64),), ["x"]
    elif kind == "clipvision":
        m = T.CLIPVisionModel(T.CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16))
        class W(torch.nn.Module):
            def __init__(s): super().__init__(); s.m = m
            def forward(s, x): return s.m(pixel_values=x).last_hidden_state
        return W(), (torch.randn(2, 3, 64, 64),), ["x"]
    elif kind == "whisper":
        m = T.WhisperModel(T.WhisperConfig(d_model=128, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=80, max_source_positions=50)).encoder
        class W(torch.nn.Module):
            def __init__(s): super().__init__(); s.m = m
            def forward(s, x): return s.m(x).last_hidden_state
        return W(), (torch.randn(2, 80, 100),), ["x"]
    class W(torch.nn.Module):
        def __init__(s): super().__init__(); s.m = m
        def forward(s, input_ids, attention_mask): return s.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return W(), (ids, mask), ["input_ids", "attention_mask"]
SIZES = {"deit_tiny_patch16_224": 224, "levit_128s": 224, "mixer_s16_224": 224, "poolformer_s12": 64,
         "nf_resnet26": 64, "resnest14d": 64, "ghostnet_100": 64, "regnetz_b16": 64, "cspresnet50": 64,
         "dla34": 64, "rexnet_100": 64, "mobilevit_xxs": 256, "edgenext_xx_small": 64, "repvgg_a0": 64,
         "efficientformer_l1": 224, "hrnet_w18_small": 64, "fastvit_t8": 64, "eca_nfnet_l0": 64, "xcit_nano_12_p16_224": 224,
         "convmixer_768_32": 64, "tf_efficientnet_b0": 64, "mobilenetv3_large_100": 64, "coat_lite_tiny": 224, "pit_ti_224": 224,
         # the 2026-12-03 sweep
         "convnextv2_atto": 64, "efficientvit_b0": 64, "mobileone_s0": 64, "tiny_vit_5m_224": 224, "regnety_002": 64,
         "res2net50_14w_8s": 64, "skresnet18": 64, "selecsls42b": 64, "dpn68": 64, "ese_vovnet19b_dw": 64, "hgnetv2_b0": 64,
         "lcnet_050": 64, "mobilevitv2_050": 256, "focalnet_tiny_srf": 64, "davit_tiny": 64, "inception_next_tiny": 64,
         "gcvit_xxtiny": 224, "mvitv2_tiny": 224, "efficientformerv2_s0": 224, "repghostnet_050": 64,
         "mobilenetv4_conv_small": 64, "mobilenetv4_hybrid_medium": 64, "ghostnetv2_100": 64, "resnetv2_50x1_bit": 64,
         "cait_xxs24_224": 224, "swinv2_tiny_window8_256": 256, "maxvit_nano_rw_256": 256, "resmlp_12_224": 224,
         "gmlp_ti16_224": 224, "starnet_s1": 64, "gernet_s": 64, "cs3darknet_s": 64, "rdnet_tiny": 64,
         "vit_relpos_small_patch16_224": 224}
for name in names:
    t = time.time()
    try:
        if name in SIZES:
            model, args, inputs = timm_model(name, SIZES[name])
        else:
            model, args, inputs = hf(name)
        model.eval()
        dyn = {i: {0: "batch"} for i in inputs}
        torch.onnx.export(model, args, f"{out}/{name}.onnx", input_names=inputs, output_names=["y"], opset_version=int(os.environ.get("EXPORT_OPSET", 17)), dynamo=False, dynamic_axes=dyn)
        print(json.dumps({"model": name, "ok": True, "s": round(time.time() - t, 1)}), flush=True)
    except Exception as e:
        print(json.dumps({"model": name, "ok": False, "error": repr(e)[:300]}), flush=True)
