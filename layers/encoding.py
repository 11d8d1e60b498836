"""Direct encoding: the network sees the same image on every time step."""


def time_expand(images, n_steps):
    """The image ``[B, C, H, W]`` on every time step -> ``[B, C, H, W, T]`` (contiguous)."""
    return images.unsqueeze(-1).expand(*images.shape, n_steps).contiguous()
