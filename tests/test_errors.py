"""Every error the user can fix is a UserError (one line, exit status 2 from the command lines),
and the warnings callers single out carry a code, so neither filters nor tests depend on wording."""
import copy
import os
import pickle

from conftest import ROOT
from config import RANDOM_NDS, ConfigError, load_config
from datasets import DataFileError, DatasetNotFound
from errors import CodedWarning, UserError, without_warning
from layers import ConfigError as LayersConfigError
from runtime.checkpoint import CheckpointError, OutputWriteError
from runtime.distributed import LaunchError
from training.guards import TrainingDiverged

MNIST = os.path.join(ROOT, 'networks', 'MNIST.yaml')


def test_every_user_error_has_one_base():
    for error in (ConfigError, LayersConfigError, CheckpointError, OutputWriteError,
                  DatasetNotFound, DataFileError, LaunchError, TrainingDiverged):
        assert issubclass(error, UserError), error
    assert UserError.exit_status == 2
    # Unrelated errors are not each other's: catching one never swallows another.
    assert not issubclass(OutputWriteError, CheckpointError)
    assert not issubclass(DataFileError, DatasetNotFound)


def test_random_nds_warning_is_found_by_its_code():
    _, warnings = load_config(MNIST, ['Network.model=ALIF', 'Network.ckpt_v=null'])
    coded = [w for w in warnings if getattr(w, 'code', None) == RANDOM_NDS]
    assert len(coded) == 1
    assert without_warning(warnings, RANDOM_NDS) == [w for w in warnings if w not in coded]
    _, warnings = load_config(MNIST, ['Network.model=LIF'])
    assert not [w for w in warnings if getattr(w, 'code', None) == RANDOM_NDS]


def test_coded_warning_is_a_string_that_keeps_its_code():
    warning = CodedWarning('some-code', 'the text')
    assert warning == 'the text' and f"warning: {warning}" == 'warning: the text'
    for copied in (copy.copy(warning), copy.deepcopy(warning), pickle.loads(pickle.dumps(warning))):
        assert copied == 'the text' and copied.code == 'some-code'
    assert without_warning(['plain', warning], 'some-code') == ['plain']
