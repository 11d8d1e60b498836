"""robustness/apgd.py: torchattacks' APGD, bit for bit without early stopping; with it, the same
per-image outcome at a fraction of the forward passes."""
import pytest
import torch
import torch.nn as nn

from robustness.apgd import Apgd


def small_classifier(seed=0, n_class=5):
    """A smooth image classifier (so that APGD needs several steps on some images)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(),
                         nn.Linear(32, n_class)).eval()


class Counting(nn.Module):
    """Counts the images the attack pushes through the model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # torchattacks' device

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


def data(n=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.randint(0, 5, (n,), generator=gen)


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
@pytest.mark.parametrize('restarts', [1, 2])
def test_without_early_stop_it_is_torchattacks_apgd_bit_for_bit(loss, restarts):
    torchattacks = pytest.importorskip('torchattacks')
    model = small_classifier()
    x, y = data()
    ours = Apgd(model, 0.05, steps=25, restarts=restarts, loss=loss, seed=7, early_stop=False)(x, y)
    theirs = torchattacks.APGD(Counting(model), norm='Linf', eps=0.05, steps=25,
                               n_restarts=restarts, loss=loss, seed=7)(x, y)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
def test_early_stop_fools_the_same_images_with_fewer_forward_passes(loss):
    model = small_classifier()
    x, y = data()
    runs = {}
    for early_stop in (False, True):
        counting = Counting(model)
        adv = Apgd(counting, 0.05, steps=25, loss=loss, seed=7, early_stop=early_stop)(x, y)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        runs[early_stop] = fooled, counting.images
    (fooled_all, images_all), (fooled_early, images_early) = runs[False], runs[True]
    # Every quantity of APGD is per image: a fooled image leaving the batch changes no other's
    # trajectory, and the first iterate that fooled an image is kept (a valid example).
    assert torch.equal(fooled_early, fooled_all)
    assert 0 < fooled_all.sum() < len(y)
    assert images_early < images_all


def test_a_correct_image_it_cannot_fool_comes_back_unchanged_and_a_wrong_one_untouched():
    model = small_classifier()
    x, y = data()
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    adv = Apgd(model, 1e-6, steps=5, seed=0)(x, y)  # too small an eps to fool anything new
    assert torch.equal(adv[wrong], x[wrong])
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1) != y, wrong)


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="APGD loss 'cw'"):
        Apgd(small_classifier(), 0.1, loss='cw')
