"""The video re-ID model: backbone stride, local ImageNet weights, identity start of RGSA/RGTR."""

import pytest
import torch
import torchvision

from train.config import ModelConfig
from train.model import ResNetTrunk, build_model


@pytest.mark.parametrize(("last_stride", "size"), [(1, (4, 2)), (2, (2, 1))])
def test_last_stride_sets_the_feature_map_size(last_stride, size):
    trunk = ResNetTrunk("resnet18", last_stride=last_stride)
    assert trunk(torch.randn(1, 3, 64, 32)).shape == (1, 512, *size)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    trunk = ResNetTrunk("resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(trunk.stem[0].weight, source.conv1.weight)
    assert torch.equal(trunk.layers[3][1].conv2.weight, source.layer4[1].conv2.weight)


def test_missing_pretrained_file_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="model.pretrained"):
        ResNetTrunk("resnet18", pretrained=str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("residual", [False, True])
def test_untrained_relation_head_at_zero_attention_scale_starts_as_average_pooling(residual):
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", head="relation", rgtr_residual=residual, attention_scale_init=0.0)
    relation = build_model(config, num_classes=5).eval()
    baseline = build_model(ModelConfig(arch="resnet18", head="avgpool"), num_classes=5).eval()
    baseline.backbone.load_state_dict(relation.backbone.state_dict())
    clips = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad():
        out = relation(clips, return_attention=True)
        expected = baseline(clips).clip_feature
    torch.testing.assert_close(out.attention, torch.full_like(out.attention, 1 / 8))
    # The plain RGTR's fresh BatchNorm divides by sqrt(1 + eps) in eval mode; the residual has none.
    scale = 1.0 if residual else (1 + 1e-5) ** -0.5
    torch.testing.assert_close(out.clip_feature, expected * scale, rtol=1e-5, atol=1e-6)


def test_default_relation_head_refines_residually_and_starts_rgsa_as_average_pooling():
    model = build_model(ModelConfig(arch="resnet18", head="relation"), num_classes=5)
    assert model.temporal.residual and model.temporal.norm is None
    assert not model.temporal.refine.weight.any()
    assert model.spatial.norm.weight.item() == 0.0
    attending = build_model(ModelConfig(arch="resnet18", head="relation", attention_scale_init=1.0), num_classes=5)
    assert attending.spatial.norm.weight.item() == 1.0


def test_training_forward_gives_logits_for_frames_and_clips():
    model = build_model(ModelConfig(arch="resnet18", head="relation"), num_classes=5).train()
    out = model(torch.randn(2, 3, 3, 64, 32))
    assert out.frame_logits.shape == (2, 3, 5)
    assert out.clip_logits.shape == (2, 5)
    assert out.clip_feature.shape == out.embedding.shape == (2, 512)
    with pytest.raises(ValueError, match="lengths"):
        model(torch.randn(2, 3, 3, 64, 32), lengths=torch.tensor([3, 2]))


def test_unknown_head_and_arch_name_the_option():
    with pytest.raises(ValueError, match="model.head"):
        build_model(ModelConfig(arch="resnet18", head="lstm"), num_classes=2)
    with pytest.raises(ValueError, match="model.arch"):
        build_model(ModelConfig(arch="vgg16"), num_classes=2)


def test_head_parameters_get_their_own_learning_rate_and_weight_decay():
    from train.config import OptimConfig
    from train.engine import build_optimizer

    model = build_model(ModelConfig(arch="resnet18", head="relation"), num_classes=5)
    config = OptimConfig(lr=1e-3, weight_decay=5e-4, head_lr_factor=0.1, head_weight_decay=0.0)
    optimizer, _ = build_optimizer(model, config)
    rest, head = optimizer.param_groups
    head_ids = {id(p) for p in [*model.spatial.parameters(), *model.temporal.parameters()] if p.requires_grad}
    assert {id(p) for p in head["params"]} == head_ids
    assert head["initial_lr"] == pytest.approx(1e-4) and head["weight_decay"] == 0.0  # before the schedule
    assert rest["initial_lr"] == pytest.approx(1e-3) and rest["weight_decay"] == 5e-4
    assert head["lr"] / rest["lr"] == pytest.approx(0.1)  # the warm-up scales both alike
    trainable = sum(p.requires_grad for p in model.parameters())
    assert len(rest["params"]) + len(head["params"]) == trainable
    baseline = build_model(ModelConfig(arch="resnet18", head="avgpool"), num_classes=5)
    assert len(build_optimizer(baseline, OptimConfig())[0].param_groups) == 1  # no head, one group
