"""The Ghost layout for ONNX Runtime's blocked float layout: the same function, no concatenation."""

import onnx
import pytest
import torch

import rubik
from rubik.deploy.export import export_onnx, verify_onnx
from rubik.deploy.layout import bottlenecks, ghost_layout, int8_layout_blocks
from rubik.models.ghost import GhostModule

SMALL_GHOST = {"name": "small_ghost", "family": "ghostnet", "width": 0.5, "depth": 0.5, "resolution": 64}


@pytest.fixture
def ghost(randomize_bn):
    torch.manual_seed(0)
    model = rubik.create_model(SMALL_GHOST, num_classes=7).eval()
    randomize_bn(model)
    return model


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("blocks", [None, 0, 3])
def test_layout_computes_the_same_logits(ghost, block, blocks):
    net = ghost_layout(ghost, block=block, blocks=blocks)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref, got = ghost(x), net(x)
    assert ref.abs().max() > 0.1  # a dead network would match anything
    torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    parts = [p for b in net.prefix.bottlenecks for p in b.parts]
    assert all(p.width % block == 0 and len(p.channels) <= p.width for p in parts)
    # Each rewritten block's parts hold every channel of the block's output once (the join relies on it).
    originals = [b for stage in ghost.blocks[:-1] for b in stage]
    for b, original in zip(net.prefix.bottlenecks, originals[: len(net.prefix.bottlenecks)], strict=True):
        assert sorted(c for p in b.parts for c in p.channels) == list(range(original.ghost2.out_ch))


def test_layout_keeps_an_odd_ghost_module_exact():
    # ceil(out/2) primary maps: the last cheap map is sliced off in the original, never computed here
    from rubik.deploy.layout import Part, PartsGhostModule

    torch.manual_seed(0)
    module = GhostModule(6, 7).eval()
    x = torch.randn(2, 6, 9, 9)
    rewritten = PartsGhostModule(module, (Part(tuple(range(6)), 16),), 16)
    padded = torch.cat([x, x.new_zeros(2, 10, 9, 9)], 1)
    p, c = rewritten([padded])
    with torch.no_grad():
        ref = module(x)
    torch.testing.assert_close(torch.cat([p[:, :4], c[:, :3]], 1), ref)
    assert p[:, 4:].abs().max() == 0 and c[:, 3:].abs().max() == 0  # padding holds exact zeros


def test_exported_layout_has_no_concat_and_verifies(tmp_path, ghost):
    def concats(path):
        return sum(n.op_type == "Concat" for n in onnx.load(str(path)).graph.node)

    plain = export_onnx(ghost, tmp_path / "plain.onnx", layout=None)
    full = export_onnx(ghost, tmp_path / "layout.onnx")
    part = export_onnx(ghost, tmp_path / "int8src.onnx", layout="int8")
    assert concats(plain) > 0 and concats(full) == 0
    assert concats(part) < concats(plain)
    for path in (full, part):
        assert verify_onnx(ghost, path).top1_agreement == 1.0


def test_int8_layout_depth_and_bad_arguments(ghost, tmp_path):
    n = sum(len(s) for s in ghost.blocks[:-1])
    assert 0 < int8_layout_blocks(bottlenecks(ghost)) < n
    with pytest.raises(TypeError, match="GhostNet v1"):
        ghost_layout(rubik.create_model({"name": "t", "width": 0.25, "depth": 0.3, "resolution": 32}))
    with pytest.raises(rubik.errors.RubikError, match="layout must be"):
        export_onnx(ghost, tmp_path / "x.onnx", layout="fast")
    with pytest.raises(rubik.errors.RubikError, match="layout must be"):  # not silently ignored elsewhere
        export_onnx(rubik.create_model({"name": "t", "width": 0.25, "depth": 0.3, "resolution": 32}),
                    tmp_path / "y.onnx", layout="fast")


def test_only_ghostnet_v1_takes_the_layout():
    # GhostNetV2's Ghost modules derive from v1's (and its network may derive from GhostNet): the layout, which
    # knows v1's arithmetic only, must leave it as it is
    from rubik.deploy.layout import in_ghost_layout, network_layout

    v2 = rubik.create_model({**SMALL_GHOST, "name": "small_v2", "family": "ghostnetv2"}).eval()
    assert any(isinstance(m, GhostModule) for m in v2.modules())
    assert not in_ghost_layout(v2) and network_layout(v2, "fp32") is v2
    with pytest.raises(TypeError, match="GhostNet v1"):
        ghost_layout(v2)


def test_int8_may_start_where_the_layout_parts_join(ghost, tmp_path):
    from rubik.deploy.quantize import candidate_boundaries

    part = onnx.load(str(export_onnx(ghost, tmp_path / "int8src.onnx", layout="int8"))).graph
    plain = onnx.load(str(export_onnx(ghost, tmp_path / "plain.onnx", layout=None))).graph
    made_by = {o: n for n in part.node for o in n.output}
    join = [i for i, n in enumerate(part.node) if n.op_type == "Concat"
            and all(made_by[t].op_type == "Slice" for t in n.input)]
    assert len(join) == 1 and join[0] + 1 in candidate_boundaries(part)
    assert part.node[join[0]].output[0] in part.node[join[0] + 1].input  # int8 starts on the joined map
    assert candidate_boundaries(part, max_candidates=1) == [min(candidate_boundaries(part))]  # "all" stays all
    plain_made_by = {o: n.op_type for n in plain.node for o in n.output}
    assert not any(n.op_type == "Concat" and all(plain_made_by.get(t) == "Slice" for t in n.input)
                   for n in plain.node)
