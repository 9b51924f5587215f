"""The private Keras 3 API tb_bnstats relies on
(:mod:`tb_bnstats.frameworks.keras.internals`): each symbol is there on the
installed Keras and behaves as the capture uses it (the JAX-only ones under
JAX), the folder names none of them outside ``internals.py``, and with a
Keras whose internals changed the callback warns once and ``fit`` runs
unchanged, with nothing written."""

import ast
import os
import pathlib
import re
import types
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tb_bnstats  # noqa: E402
from keras_models import conv_net  # noqa: E402
from tb_bnstats.frameworks.keras import internals  # noqa: E402
from tb_bnstats.frameworks.keras.capture.layers import called_with_training_false  # noqa: E402

pytestmark = pytest.mark.backend  # runs again under each Keras backend (Makefile, test-python)

BACKEND = keras.backend.backend()
FOLDER = pathlib.Path(internals.__file__).parent
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="a symbol of Keras' JAX trainer")


def _symbol(name):
    return next(s for s in internals.SYMBOLS if s.name == name)


def _bn(shape=(4, 3)):
    layer = keras.layers.BatchNormalization()
    layer.build(shape)
    return layer


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(5, name="dense")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.ReLU()(h)))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, (n, 6)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


# -- the symbols, one by one ---------------------------------------------------------------------------------------

def test_every_symbol_of_the_running_backend_is_there():
    assert internals.check() == []


def test_the_check_covers_this_backend_only():
    checked = {s.name for s in internals.SYMBOLS if s.framework == internals.KERAS3
               and s.backend in (None, BACKEND)}
    assert "keras.layers.BatchNormalization._moments" in checked
    assert ("keras.Model._get_state_sharding_spec" in checked) == (BACKEND == "jax")


def test_moments_returns_the_batch_mean_and_variance():
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 3)).astype("float32")
    layer = _bn()
    for mean, var in (internals.moments(layer)(keras.ops.convert_to_tensor(x), None),
                      internals.class_moments(layer)(layer, keras.ops.convert_to_tensor(x), None)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(mean).ravel(), x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var).ravel(), x.var(0), rtol=1e-4, atol=1e-5)


def test_set_moments_is_what_the_layer_calls_in_training():
    layer, seen = _bn(), []
    original = internals.moments(layer)

    def wrapper(inputs, mask):
        seen.append(True)
        return original(inputs, mask)

    internals.set_moments(layer, wrapper)
    layer(np.ones((4, 3), "float32"), training=True)
    assert seen


def test_flatten_layers_finds_nested_layers():
    names = {layer.name for layer in internals.flatten_layers(conv_net())}
    assert {"bn1", "bn2", "inner_bn", "nested", "block"} <= names
    assert "conv_net" not in names  # the model itself is not included


def test_graph_nodes_keep_the_training_argument_of_each_call():
    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(name="bn")
    other = keras.layers.BatchNormalization(name="other")
    model = keras.Model(inputs, other(bn(inputs, training=False)))
    kwargs = {node.operation.name: internals.node_kwargs(node) for node in internals.graph_nodes(model)}
    assert kwargs["bn"].get("training") is False and kwargs["other"].get("training") is None
    assert called_with_training_false(model) == {id(bn)}
    assert internals.graph_nodes(keras.layers.Dense(2)) == []  # no graph: nothing


def test_compiled_loss_and_metrics_appear_with_compile_and_change_with_it():
    model = small_model()
    first = internals.compiled_loss(model), internals.compiled_metrics(model)
    assert first[0] is not None
    model.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
    assert internals.compiled_loss(model) is not None and internals.compiled_loss(model) is not first[0]
    assert internals.compiled_metrics(model) is not None
    inputs = keras.Input((2,))
    assert internals.compiled_loss(keras.Model(inputs, inputs)) is None  # not compiled


def test_make_train_function_makes_the_train_function():
    model = small_model()
    assert model.train_function is None
    made = internals.make_train_function(model)
    made(force=True)
    assert callable(model.train_function)
    calls = []
    internals.set_make_train_function(model, lambda force=False: calls.append(force) or made(force=force))
    model.fit(*data(), batch_size=32, epochs=1, verbose=0)
    assert calls  # fit makes its train function through it


@jax_only
def test_state_sharding_spec_is_one_list_per_state_part():
    model = small_model()
    model.fit(*data(), batch_size=32, epochs=1, verbose=0)
    trainable, non_trainable, *_ = internals.state_sharding_spec(model)()
    assert len(trainable) == len(model.trainable_variables)
    assert len(non_trainable) == len(model.non_trainable_variables)


@jax_only
def test_jax_state_sync_and_nnx_flag():
    model = small_model()
    model.fit(*data(), batch_size=32, epochs=1, verbose=0)
    internals.state_sync(model)
    assert internals.nnx_enabled() is False


def test_the_folder_names_no_private_keras_symbol_outside_internals():
    private = {s.attribute for s in internals.SYMBOLS if s.attribute and s.attribute.startswith("_")}
    for path in sorted(FOLDER.rglob("*.py")):
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(FOLDER)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in private, f"{where} uses {node.attr}: go through internals"
            elif isinstance(node, ast.Constant):
                assert node.value not in private, f"{where} names {node.value!r}: go through internals"
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("keras.src", "tf_keras.src")), f"{where} imports {node.module}"


# -- a Keras whose internals changed --------------------------------------------------------------------------------

def test_a_missing_symbol_is_named_with_the_version_and_the_tested_range(monkeypatch):
    monkeypatch.delattr(keras.layers.BatchNormalization, "_moments")
    missing = internals.check()
    assert [s.name for s, _ in missing] == ["keras.layers.BatchNormalization._moments"]
    message = internals.missing_message(missing)
    assert "keras.layers.BatchNormalization._moments" in message
    assert keras.version() in message and internals.TESTED_KERAS in message
    with pytest.raises(internals.MissingInternal, match="_moments"):
        internals.class_moments(_bn())


def test_a_changed_signature_is_reported(monkeypatch):
    monkeypatch.setattr(keras.layers.BatchNormalization, "_moments", lambda self, inputs: None)
    (symbol, problem), = internals.check()
    assert symbol is _symbol("keras.layers.BatchNormalization._moments") and "takes (self, inputs)" in problem


def test_an_instance_attribute_that_disappears_is_reported(monkeypatch):
    original = keras.Model.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self._compile_loss

    monkeypatch.setattr(internals, "_INSTANCES", {})
    monkeypatch.setattr(keras.Model, "__init__", init)
    assert [s.name for s, _ in internals.check()] == ["keras.Model._compile_loss"]


def _losses(callbacks, seed=3):
    keras.utils.set_random_seed(seed)
    model, seen = small_model(seed), []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["loss"]))

    model.fit(*data(), batch_size=16, epochs=2, verbose=0, callbacks=[Losses()] + callbacks)
    return seen, model


def _rename_moments(monkeypatch, new_name="_batch_moments"):
    """A Keras that renamed ``BatchNormalization._moments``: the method
    under its new name, and ``call`` compiled to call that name (Keras
    itself keeps training; only tb_bnstats' name is gone)."""
    cls = keras.layers.BatchNormalization
    code = cls.call.__code__
    assert "_moments" in code.co_names
    call = types.FunctionType(code.replace(co_names=tuple(new_name if n == "_moments" else n for n in code.co_names)),
                              cls.call.__globals__, cls.call.__name__, cls.call.__defaults__, cls.call.__closure__)
    monkeypatch.setattr(cls, new_name, cls._moments, raising=False)
    monkeypatch.setattr(cls, "call", call)
    monkeypatch.delattr(cls, "_moments")


def test_a_missing_symbol_turns_monitoring_off_and_fit_runs_unchanged(tmp_path, monkeypatch):
    without, _ = _losses([])
    _rename_moments(monkeypatch)
    callback = tb_bnstats.BNStatsCallback(tmp_path / "run", verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_cb, model = _losses([callback])
        model.fit(*data(), batch_size=16, epochs=1, verbose=0, callbacks=[callback])  # a second fit: no new warning
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "tb_bnstats" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "keras.layers.BatchNormalization._moments" in str(ours[0].message)
    assert keras.version() in str(ours[0].message) and internals.TESTED_KERAS in str(ours[0].message)
    assert with_cb == without  # the same losses, step by step
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))  # nothing written
    layer = model.get_layer("bn")
    assert "call" not in layer.__dict__  # no layer wrapped
    assert not hasattr(model.train_function, "_tb_bnstats_recorders")  # no train function wrapped
    assert callback.findings is None


def test_setup_pins_keras_to_the_tested_range_and_the_installed_release_is_in_it():
    from packaging.specifiers import SpecifierSet

    setup = (pathlib.Path(__file__).resolve().parent.parent / "setup.py").read_text(encoding="utf-8")
    pins = set(re.findall(r'"keras([<>=!~][^"]*)"', setup))
    assert pins == {internals.TESTED_KERAS}
    assert SpecifierSet(internals.TESTED_KERAS).contains(keras.version())


def test_the_check_leaves_keras_automatic_names_alone(monkeypatch):
    """The check's own small model is named: the layers and models a user
    makes after it get the automatic names they would get without
    tb_bnstats (identity_3 after identity_2, not identity_4)."""
    def suffix(name):
        return int(name.rsplit("_", 1)[1]) if name.rsplit("_", 1)[-1].isdigit() else 0

    monkeypatch.setattr(internals, "_INSTANCES", {})
    before = [suffix(keras.layers.Identity().name), suffix(keras.Sequential().name)]
    assert internals._instance("keras.Model") is not None
    after = [suffix(keras.layers.Identity().name), suffix(keras.Sequential().name)]
    assert after == [before[0] + 1, before[1] + 1]
