"""Hooks run in the order installed, only while installed, and do nothing by default."""

from isheep_jax.core import hooks


class Recorder(hooks.Hooks):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_train_step(self):
        self.log.append((self.name, "before_train_step"))

    def after_sampling_batch(self):
        self.log.append((self.name, "after_sampling_batch"))


def test_installed_hooks_run_in_order_and_only_while_installed():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    with hooks.installed(a), hooks.installed(b):
        hooks.before_train_step()
        hooks.after_train_step()  # neither overrides it: the base class does nothing
        hooks.after_sampling_batch()
        hooks.between_stages()
        hooks.after_release()
    hooks.before_train_step()  # uninstalled: nobody hears it
    assert log == [
        ("a", "before_train_step"),
        ("b", "before_train_step"),
        ("a", "after_sampling_batch"),
        ("b", "after_sampling_batch"),
    ]
