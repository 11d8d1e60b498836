"""The paper's protocol for one data set, end to end:

    1. LIF clean training, then its NDS recorded over the training set      -> <out>/lif_clean
    2. HoSNN (TA-LIF anchored on that NDS) clean training                   -> <out>/hosnn_clean
    3. adversarial fine-tuning (ATTACK.ft_method at ATTACK.train[0]) of both -> <out>/{lif,hosnn}_ft
    4. the adversarial test of all four models: clean, FGSM, R-FGSM, PGD, BIM at every
       ATTACK.strength, plus two sanity rows: PGD transferred from the partner model (the other
       neuron, same training) and random +-eps sign noise              -> <out>/results.json
       With --suite quick|full, the table adds each model's per-image worst case under
       robustness.evaluate's suite (reports in <out>/<model>/robustness-<suite>/).

    torchrun --standalone --nproc_per_node=2 protocol.py -d 3 --out runs/fashionmnist \\
        --lif-epochs 10 --hosnn-epochs 80 --ft-epochs 5

Every stage is a normal run of training.experiment.run_experiment, main.py's code (checkpoints,
results.json, TensorBoard in its directory). ``--resume`` skips finished stages and resumes an
interrupted one.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time

from robustness import checkpoint_evaluation, plan
from robustness.threats import parse_eps
from attack import Normalization, attack_bounds, attacks_for, training_attack
from config import RANDOM_NDS, ConfigError, attack_strengths
from errors import without_warning
from training.diagnostics import SpikeMonitor, diagnose
from training.engine import accuracy_under_attack
from runtime.formatting import eps_text
from runtime.outputs import RunOutputs
from runtime.rng import seed_everything
from runtime.rundir import open_run_directory
from training.cli import add_config_arguments, config_from_args, run_cli
from training.experiment import build_loaders, build_model, run_experiment
from training.protocol_table import MODELS, PARTNER, TITLES, format_markdown_table


def get_args_parser():
    parser = argparse.ArgumentParser(description='The HoSNN protocol: LIF -> NDS -> HoSNN -> '
                                     'adversarial fine-tuning -> LIF vs HoSNN robustness table')
    add_config_arguments(parser, set_help='override a config key in every stage (repeatable)')
    parser.add_argument('--out', required=True, help='directory of the protocol run')
    parser.add_argument('--lif-epochs', type=int, required=True)
    parser.add_argument('--hosnn-epochs', type=int, required=True)
    parser.add_argument('--ft-epochs', type=int, required=True,
                        help='adversarial fine-tuning epochs of each model')
    parser.add_argument('--resume', action='store_true', help='skip finished stages, resume the rest')
    parser.add_argument('--allow-config-change', action='store_true',
                        help='with --resume: accept --set values that differ from those an '
                        'unfinished stage was started with (recorded in its results.json)')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', choices=('cpu', 'cuda'))
    parser.add_argument('--workers', type=int)
    parser.add_argument('--suite', choices=plan.SUITES, default='published',
                        help="the final table's attacks: the published ones only, or also the "
                        "worst case of evaluate.py's quick/full adaptive suite")
    return parser


def stage_configs(base, out_dir, args):
    """The four training stages as resolved configs (the base config with stage keys set)."""
    nds_path = os.path.join(out_dir, 'lif_clean', 'nds.pt')  # the LIF stage's own output

    def stage(model, epochs, advtrain, ckpt=None, ckpt_v=None, save_target=False):
        cfg = copy.deepcopy(base)
        cfg['DEFAULT'].update(cleantrain=not advtrain, advtrain=advtrain, advtest=False, ckpt=ckpt)
        cfg['Network'].update(model=model, epochs=epochs, ckpt_v=ckpt_v, save_target=save_target)
        return cfg

    best = lambda name: os.path.join(out_dir, name, 'best.pth')  # noqa: E731
    return nds_path, {
        'lif_clean': stage('LIF', args.lif_epochs, False, save_target=True),
        'hosnn_clean': stage('ALIF', args.hosnn_epochs, False, ckpt_v=nds_path),
        'lif_ft': stage('LIF', args.ft_epochs, True, ckpt=best('lif_clean')),
        'hosnn_ft': stage('ALIF', args.ft_epochs, True, ckpt=best('hosnn_clean'), ckpt_v=nds_path),
    }


def stage_finished(stage_dir):
    path = os.path.join(stage_dir, 'results.json')
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get('finished'))


def load_model(cfg, stage_dir, ctx):
    return build_model(cfg, os.path.join(stage_dir, 'best.pth'), ctx.device).eval()


def robustness_table(models, stage_cfgs, loader, strengths, ctx, outputs, ft):
    """Rows ``{'attack', 'eps', 'n_samples', <model name>: accuracy, ..., 'output_rate':
    {<model name>: the output layer's mean spikes per neuron per step, None for a softmax
    read-out}}`` for the four models, and the warnings of diagnostics.diagnose on the clean row
    (a silent output layer, constant predictions)."""
    table = {}  # (attack, eps) -> row, in the order rows are first measured
    monitors = {name: SpikeMonitor(model) for name, model in models.items()}
    warnings = []

    def record(attack, eps, name, accuracy, n, spikes):
        row = table.setdefault((attack, eps), {'attack': attack, 'eps': eps, 'n_samples': n,
                                               'output_rate': {}})
        row[name] = accuracy
        row['output_rate'][name] = spikes['output_rate']

    def measure(source, attack, eps, targets):
        cfg = stage_cfgs[source]
        for target in targets:
            monitors[target].reset()
        with contextlib.ExitStack() as stack:
            for target in targets:  # counts the evaluated forwards only, not the attack's
                stack.enter_context(monitors[target])
            accuracies, n = accuracy_under_attack(
                models[source], [models[t] for t in targets], loader, ctx, outputs.progress,
                attack, Normalization.of(cfg['Network']).to_model_units(eps), attack_bounds(cfg),
                desc=f"{source} {attack or 'clean'} eps={eps_text(eps)}")
        return accuracies, n, [monitors[t].stats(ctx) for t in targets]

    for name in MODELS:
        (accuracy,), n, (spikes,) = measure(name, None, 0.0, [name])
        record('clean', 0.0, name, accuracy, n, spikes)
        for warning in diagnose(spikes, f"{name} ({TITLES[name].format(ft=ft)}), clean test"):
            warnings.append(warning)
            outputs.log(f"warning: {warning}")
    for eps in strengths:
        for attack in attacks_for('test') + attacks_for('baseline'):
            for name in MODELS:
                if attack == 'pgd':
                    # One PGD pass gives the white-box row and the partner's transfer row.
                    (white_box, transfer), n, (own, partner) = measure(
                        name, 'pgd', eps, [name, PARTNER[name]])
                    record('pgd', eps, name, white_box, n, own)
                    record('pgd-transfer', eps, PARTNER[name], transfer, n, partner)
                else:
                    (accuracy,), n, (spikes,) = measure(name, attack, eps, [name])
                    record(attack, eps, name, accuracy, n, spikes)
        outputs.log(format_markdown_table([r for r in table.values() if r['eps'] == eps], ft))
    return list(table.values()), warnings


def run_protocol(args, base, warnings, ctx):
    out_dir = args.out
    nds_path, stages = stage_configs(base, out_dir, args)
    previous = None
    if args.resume and os.path.isfile(os.path.join(out_dir, 'results.json')):
        with open(os.path.join(out_dir, 'results.json')) as f:
            previous = json.load(f)
    summary_outputs = RunOutputs(out_dir, ctx, base, results=previous, resume=args.resume)
    summary_outputs.results.setdefault('stages', {})
    for warning in warnings:
        summary_outputs.log(f"warning: {warning}")
    for name, cfg in stages.items():
        stage_dir = os.path.join(out_dir, name)
        if args.resume and stage_finished(stage_dir):
            summary_outputs.log(f"== {name}: finished earlier, skipped")
            continue
        resume = args.resume and os.path.isfile(os.path.join(stage_dir, 'last.pth'))
        summary_outputs.log(f"== {name}: {cfg['Network']['model']}, {cfg['Network']['epochs']} epochs"
                            f"{', adversarial' if cfg['DEFAULT']['advtrain'] else ''}"
                            f"{' (resumed)' if resume else ''}")
        start = time.perf_counter()
        run_experiment(cfg, stage_dir, ctx, resume=resume, workers=args.workers,
                       nds_out=nds_path if cfg['Network']['save_target'] else None,
                       allow_config_change=args.allow_config_change)
        summary_outputs.results['stages'][name] = {'wall_time_s': time.perf_counter() - start}
        summary_outputs.write_results()
        summary_outputs.check_writes()  # rank 0 could not write: every rank stops here

    summary_outputs.log("== adversarial test of the four models")
    start = time.perf_counter()
    seed_everything(base['DEFAULT']['seed'] + 1000 * ctx.rank)
    models = {name: load_model(stages[name], os.path.join(out_dir, name), ctx) for name in MODELS}
    _, test_loader, _ = build_loaders(base, ctx, args.workers)
    ft = training_attack(base['ATTACK']['ft_method']).title
    rows, warnings = robustness_table(models, stages, test_loader, attack_strengths(base), ctx,
                                      summary_outputs, ft)
    if args.suite != 'published':
        rows += checkpoint_evaluation.protocol_rows(
            models, PARTNER, stages, {n: os.path.join(out_dir, n, 'best.pth') for n in MODELS},
            {n: os.path.join(out_dir, n, f"robustness-{args.suite}") for n in MODELS}, args.suite,
            [parse_eps(e) for e in base['ATTACK']['strength']], ctx, summary_outputs.log)
    table = format_markdown_table(rows, ft)
    summary_outputs.results['stages']['adversarial_test'] = {'wall_time_s': time.perf_counter() - start}
    summary_outputs.results.update(robustness=rows, table_markdown=table, nds_file=nds_path,
                                   warnings=warnings, finished=True)
    summary_outputs.write_results()
    notes = ''.join(f"\nwarning: {warning}" for warning in warnings)
    summary_outputs.write_text('table.md', table + '\n' + (notes[1:] + '\n' if notes else ''))
    summary_outputs.log(f"\nLIF vs HoSNN, accuracy (%) on {rows[0]['n_samples']} test samples:\n{table}"
                        f"{notes}")
    summary_outputs.close()


def prepare(args):
    for flag in ('lif_epochs', 'hosnn_epochs', 'ft_epochs'):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0")
    base, warnings, _ = config_from_args(args)
    if not base['ATTACK']['train']:
        raise ConfigError("ATTACK.train is empty: the fine-tuning stages need an eps")
    # The stages set model and ckpt_v themselves: the base config's NDS warning does not apply.
    warnings = without_warning(warnings, RANDOM_NDS)
    return base, warnings


def execute(args, prepared, ctx):
    base, warnings = prepared
    # One --out, one protocol run: the top-level directory is locked like each stage's (a second
    # run on it while this one lives is refused in one line, before it writes anything).
    run_dir = open_run_directory(args.out, ctx)
    try:
        run_protocol(args, base, warnings, ctx)
    finally:
        run_dir.release()


def main(argv=None):
    return run_cli(get_args_parser().parse_args(argv), prepare, execute)


if __name__ == '__main__':
    sys.exit(main())
