"""Multi-node, tested on one machine (issue 19 item 7): two torchrun launchers, one per "node"
(--nnodes=2 --node-rank=0|1 --nproc-per-node=1, rendezvous on 127.0.0.1), each in its own working
directory with a relative --out, as two machines with their own disks. Both exit 0; rank 0 alone
writes (node 1's directory stays empty); every test sample is counted once; the weights are those
of a one-node two-process run (to float64 rounding: the CPU thread counts differ)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from fixtures import write_mnist_like
from runtime.checkpoint import load_checkpoint
from test_checkpoint_model import small

N_TRAIN, N_TEST = 32, 9  # 9: the two ranks get unequal shards (5 + 4)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(*launcher, cwd, args):
    return subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', *launcher,
         os.path.join(ROOT, 'main.py'), *args],
        cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_two_nodes_match_one_node(tmp_path):
    data = tmp_path / 'data'
    write_mnist_like(str(data), N_TRAIN, N_TEST)
    args = ['-d', '0', '--out', 'run', '--device', 'cpu', *small(
        str(data), 'Network.model=LIF', 'Network.loss=softmax', 'Network.epochs=2',
        'Network.batch_size=8', 'DEFAULT.dtype=float64', 'ATTACK.strength=[1/10]')]
    nodes = [tmp_path / 'node0', tmp_path / 'node1']
    for node in nodes:
        node.mkdir()
    port = free_port()
    launchers = [torchrun('--nnodes=2', f'--node-rank={rank}', '--nproc-per-node=1',
                          '--master-addr=127.0.0.1', f'--master-port={port}', cwd=node, args=args)
                 for rank, node in enumerate(nodes)]
    stdout = [finish(proc) for proc in launchers]

    assert os.listdir(nodes[1]) == []  # rank 1 wrote nothing on its node
    assert 'adversarial test' in stdout[0] and stdout[1].strip() == ''  # rank 0 alone logs
    run = nodes[0] / 'run'
    results = json.loads((run / 'results.json').read_text())
    assert results['world_size'] == 2
    assert [e['test_samples'] for e in results['epochs']] == [N_TEST, N_TEST]
    assert {row['n_samples'] for row in results['robustness']} == {N_TEST}

    one_node = tmp_path / 'one_node'
    one_node.mkdir()
    finish(torchrun('--standalone', '--nproc-per-node=2', cwd=one_node, args=args))
    a = load_checkpoint(str(run / 'last.pth'))['net']
    b = load_checkpoint(str(one_node / 'run' / 'last.pth'))['net']
    assert a.keys() == b.keys()
    for key in a:  # to rounding: a node's one process uses both cores, the two local ones one each
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-12, msg=key)
    other = json.loads((one_node / 'run' / 'results.json').read_text())
    assert [e['test_acc'] for e in other['epochs']] == [e['test_acc'] for e in results['epochs']]
