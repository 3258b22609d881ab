"""The tied table's single autograd node (truncated_bptt/tied_table.py) against autograd's own
gradients of the same uses: ``F.embedding`` plus slicing, in the unit and in the whole model."""
import pytest
import torch
import torch.nn.functional as F

from inference_models import small_decoder, tokens
from truncated_bptt.adaptive_cross_entropy_criterion import AdaptiveCrossEntropyCriterion
from truncated_bptt.tied_table import TiedOutputWeights, gather_and_split, output_weights_of, tied_linear

SIZES = [6, 10, 14]


def reference_grad(table, ids, rows_weight, cluster_weights):
    """d/d table of sum(rows * rows_weight) + sum_i sum(cluster_i * cluster_weights[i]) by autograd,
    the uses written plainly (cluster_weights[i] None: cluster i unused)."""
    table = table.detach().clone().requires_grad_(True)
    loss = (F.embedding(ids, table) * rows_weight).sum() if rows_weight is not None else 0.0
    for part, w in zip(table.split(SIZES), cluster_weights):
        if w is not None:
            loss = loss + (part * w).sum()
    loss.backward()
    return table.grad


def node_grad(table, ids, rows_weight, cluster_weights):
    table = table.detach().clone().requires_grad_(True)
    rows, weights = gather_and_split(table, ids, SIZES)
    assert isinstance(weights, TiedOutputWeights) and len(weights.clusters) == len(SIZES)
    assert torch.equal(rows, F.embedding(ids, table))
    for part, cluster in zip(table.split(SIZES), weights.clusters):
        assert torch.equal(part, cluster) and cluster.grad_fn is not None
    loss = (rows * rows_weight).sum() if rows_weight is not None else 0.0
    for cluster, w in zip(weights.clusters, cluster_weights):
        if w is not None:
            loss = loss + (cluster * w).sum()
    loss.backward()
    return table.grad


@pytest.mark.parametrize("used", ["all", "rows_and_head", "clusters_only", "rows_only"])
def test_one_node_gives_autograds_gradient(used):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(sum(SIZES), 8, generator=g)
    ids = torch.randint(0, sum(SIZES), (3, 7), generator=g)
    ids[0, :3] = 5  # repeated rows add up
    rows_weight = None if used == "clusters_only" else torch.randn(3, 7, 8, generator=g)
    cluster_weights = [torch.randn(s, 8, generator=g) for s in SIZES]
    if used == "rows_and_head":
        cluster_weights[1] = cluster_weights[2] = None
    if used == "rows_only":
        cluster_weights = [None] * len(SIZES)
    torch.testing.assert_close(node_grad(table, ids, rows_weight, cluster_weights),
                               reference_grad(table, ids, rows_weight, cluster_weights),
                               rtol=1e-6, atol=1e-6)


def product_loss(clusters, xs, biases, uses, linear):
    """sum over clusters i and uses j of linear((j + 1) xs[i], clusters[i], biases[i]), weighted
    (every use with its own input, so that its weight gradient differs from the others')."""
    loss = 0.0
    for cluster, x, bias in zip(clusters, xs, biases):
        for j, use in enumerate(uses):
            x_j = x * (j + 1)
            out = linear(x_j, cluster, bias) if use == "tied" else F.linear(x_j, cluster, bias)
            loss = loss + (out * torch.arange(out.numel()).view_as(out).float().cos()).sum()
    return loss


@pytest.mark.parametrize("uses", [("tied",), ("tied", "tied"), ("tied", "plain"), ("plain", "tied")])
def test_cluster_products_write_into_the_nodes_gradient_and_still_add_up(uses):
    """A cluster's product through tied_linear writes its weight gradient into the node's table
    gradient; a second product of the same cluster (or a plain one) must still be added to it."""
    g = torch.Generator().manual_seed(1)
    table = torch.randn(sum(SIZES), 8, generator=g)
    ids = torch.randint(0, sum(SIZES), (2, 5), generator=g)
    xs = [torch.randn(n, 8, generator=g, requires_grad=True) for n in (4, 3, 1)]
    biases = [torch.randn(s, generator=g, requires_grad=True) for s in SIZES]
    rows_weight = torch.randn(2, 5, 8, generator=g)

    ref_table = table.clone().requires_grad_(True)
    ref_loss = (F.embedding(ids, ref_table) * rows_weight).sum() + product_loss(
        ref_table.split(SIZES), xs, biases, ["plain"] * len(uses), F.linear)
    ref = torch.autograd.grad(ref_loss, [ref_table, *xs, *biases])

    node_table = table.clone().requires_grad_(True)
    rows, weights = gather_and_split(node_table, ids, SIZES)
    outputs = [tied_linear(xs[0], weights.clusters[0], biases[0])]
    assert type(outputs[0].grad_fn).__name__ == "_ClusterLinearBackward"  # the direct path runs
    loss = (rows * rows_weight).sum() + product_loss(weights.clusters, xs, biases, uses, tied_linear)
    got = torch.autograd.grad(loss, [node_table, *xs, *biases])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_retained_graph_gives_the_same_gradient_twice():
    g = torch.Generator().manual_seed(2)
    table = torch.randn(sum(SIZES), 8, generator=g, requires_grad=True)
    ids = torch.randint(0, sum(SIZES), (2, 5), generator=g)
    xs = [torch.randn(3, 8, generator=g) for _ in SIZES]
    rows, weights = gather_and_split(table, ids, SIZES)
    loss = rows.square().sum() + product_loss(weights.clusters, xs, [None] * len(SIZES), ["tied"], tied_linear)
    (first,) = torch.autograd.grad(loss, [table], retain_graph=True)
    (second,) = torch.autograd.grad(loss, [table])
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_tied_linear_leaves_other_weights_alone():
    x, weight = torch.randn(3, 4), torch.randn(5, 4, requires_grad=True)
    assert tied_linear(x, weight, None) is None
    with torch.no_grad():
        _, weights = gather_and_split(torch.randn(30, 4, requires_grad=True), torch.zeros(1, 1, dtype=torch.long), SIZES)
        assert tied_linear(x, weights.clusters[0], None) is None


def test_sizes_that_do_not_cover_the_table_are_refused():
    with pytest.raises(ValueError, match="do not add up"):
        gather_and_split(torch.zeros(10, 2, requires_grad=True), torch.zeros(1, 1, dtype=torch.long), [4, 4])


def criterion_loss(decoder, x, y):
    """The training loss of adaptive_cross_entropy on one segment, and the forward's output."""
    net_output = decoder(x, memory_key="train", segment_index=1)
    model = torch.nn.Module()
    model.decoder = decoder
    model.get_targets = lambda sample, net_output: sample["target"]
    criterion = AdaptiveCrossEntropyCriterion(task=type("T", (), {"target_dictionary": decoder.dictionary})(),
                                              sentence_avg=False)
    loss, _ = criterion.compute_loss(model, net_output, {"target": y})
    return loss, net_output


def graph_node_names(tensor):
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("overrides", [{}, {"d_embed": 12}, {"cutoffs": [10]}, {"div_val": 4, "cutoffs": []}])
def test_model_training_through_the_node_has_the_reference_gradients(overrides):
    x, y = tokens(3, 8), tokens(3, 8, seed=1)
    grads = []
    for use_node in (True, False):
        decoder = small_decoder(dropout=0.0, **overrides)
        decoder.train()
        if not use_node:  # the reference: the embedding and the softmax each use the table plainly
            decoder._embed = lambda tokens: (decoder.embed(tokens), None)
        decoder(x, memory_key="train", segment_index=0)
        loss, net_output = criterion_loss(decoder, x, y)
        weights = output_weights_of(net_output)
        if use_node:  # the path this test is about ran: the softmax's weights came out of the node
            assert isinstance(weights, TiedOutputWeights)
            assert type(weights.clusters[0].grad_fn).__name__ == "_GatherAndSplitBackward"
            # and the cluster products wrote their weight gradients into the node's directly
            assert "_ClusterLinearBackward" in graph_node_names(loss)
        else:
            assert weights is None
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in decoder.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", ["eval", "no_grad", "untied", "div_val"])
def test_the_node_is_only_used_for_tied_single_table_training(case):
    overrides = {"untie_weight": True} if case == "untied" else {"div_val": 2} if case == "div_val" else {}
    decoder = small_decoder(**overrides)
    decoder.train(case != "eval")
    with torch.set_grad_enabled(case != "no_grad"):
        net_output = decoder(tokens(2, 8), memory_key="train", segment_index=0)
    assert output_weights_of(net_output) is None
