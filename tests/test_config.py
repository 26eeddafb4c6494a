"""Config, presets, layering and the CLI built from the dataclass."""
import json
import math

import pytest

from rd3fast import config as C
from rd3fast.config import PRESETS, Config, lr_factor, resolve
from rd3fast.errors import RD3Error
from rd3fast.run import build_parser


def parse(argv):
    return C.config_from_args(build_parser().parse_args(argv))


def test_every_preset_resolves_and_names_its_upstream():
    src = open(C.__file__).read()
    for name in PRESETS:
        cfg = C.preset(name)
        assert cfg.preset == name
        # each preset has a comment block above it naming its source file or paper
        block = src.split(f'"{name}": dict(')[0].rsplit("),\n", 1)[-1]
        assert "#" in block, f"preset {name} has no comment naming its upstream"


def test_preset_values_match_protocol_facts():
    rd3 = C.preset("rd3")
    assert (rd3.batch_size, rd3.epochs, rd3.loss, rd3.temperature, rd3.patch_shuffle, rd3.rrc_scale,
            rd3.mix, rd3.zeta) == (50, 400, "kl", 20.0, 2, (0.5, 1.0), "cutmix", 1.0)
    assert C.preset("sre2l").no_decay_bn_bias and C.preset("sre2l").batch_size == 1024
    assert C.preset("rded").zeta == 2.0 and C.preset("rded").rded_extra_forward
    edc = C.preset("edc")
    assert edc.loss == "mse_gt" and edc.ce_weight == 0.025 and len(edc.teacher) == 4 and edc.edc_noop_shuffle
    assert edc.ema_decay == 0.99 and edc.eval_ema
    assert C.preset("gvbsm").ce_weight == 0.1 and C.preset("gvbsm").logit_norm
    cifar = C.preset("sre2l-cifar")
    assert (cifar.crop, cifar.mix, cifar.temperature, cifar.epochs) == ("random_crop", "mixup", 30.0, 400)


def test_layering_preset_file_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 7, "batch-size": 33, "lr": 0.5}))
    cfg = parse(["--preset", "rded", "--config", str(f), "--lr", "0.25", "--seeds", "0,1,2"])
    assert cfg.preset == "rded" and cfg.zeta == 2.0  # from the preset
    assert cfg.epochs == 7 and cfg.batch_size == 33  # from the file
    assert cfg.lr == 0.25 and cfg.seeds == (0, 1, 2)  # flags win


def test_results_json_config_can_be_rerun(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"config": C.preset("cda").replace(epochs=3).to_dict(), "runs": []}))
    cfg = resolve(config_file=f)
    assert cfg.preset == "cda" and cfg.epochs == 3 and cfg.batch_size == 128


def test_types_tuples_and_bools():
    cfg = parse(["--rrc-scale", "0.25,1", "--rrc-ratio", "3/4,4/3", "--no-drop-last", "--kl-t2",
                 "--teacher", "resnet18", "--teacher", "mobilenet_v2", "--teacher-weights", "a.pt,b.pt"])
    assert cfg.rrc_scale == (0.25, 1.0) and math.isclose(cfg.rrc_ratio[1], 4 / 3)
    assert cfg.kl_t2 is True and cfg.drop_last is False
    assert cfg.teacher == ("resnet18", "mobilenet_v2") and cfg.teacher_weights == ("a.pt", "b.pt")


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "ten"], "--epochs: expected int"),
    (["--loss", "hinge"], "--loss: expected one of"),
    (["--rrc-scale", "0.5"], "--rrc-scale: expected two"),
    (["--rrc-scale", "0.9,0.1"], "--rrc-scale"),
    (["--flip-p", "1.5"], "--flip-p"),
    (["--teacher", "resnet18", "--teacher-weights", "a.pt,b.pt"], "--teacher-weights"),
    (["--sched", "multistep"], "--milestones"),
    (["--seeds", ""], "--seeds"),
])
def test_bad_values_name_the_flag(argv, match):
    with pytest.raises(RD3Error, match=match):
        parse(argv)


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(RD3Error, match="unknown key 'epochz'"):
        resolve(config_file=f)
    f.write_text("{not json")
    with pytest.raises(RD3Error, match="not valid JSON"):
        resolve(config_file=f)


def test_unknown_flag_and_preset_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--epochz", "3"])
    assert e.value.code == 2 and "--epochz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--preset", "nope"])


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().epochs = 3  # type: ignore[misc]


def test_cosine_schedule_zeta():
    one, two = C.preset("rd3").replace(epochs=100), C.preset("rded").replace(epochs=100)
    assert lr_factor(one, 0) == 1.0 and lr_factor(two, 0) == 1.0
    assert abs(lr_factor(one, 100)) < 1e-12  # zeta 1 ends at 0
    assert math.isclose(lr_factor(two, 100), 0.5)  # zeta 2 at half the start
    assert math.isclose(lr_factor(one, 50), 0.5)
    vals = [lr_factor(one, e) for e in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_other_schedules_and_warmup():
    base = Config(epochs=10, sched="step", step_size=3, gamma=0.5)
    assert [lr_factor(base, e) for e in (0, 2, 3, 6, 9)] == [1, 1, 0.5, 0.25, 0.125]
    ms = base.replace(sched="multistep", milestones=(2, 5))
    assert [lr_factor(ms, e) for e in (0, 2, 5, 9)] == [1, 0.5, 0.25, 0.25]
    lin = base.replace(sched="linear")
    assert lr_factor(lin, 5) == 0.5
    warm = Config(epochs=10, warmup_epochs=4)
    assert [lr_factor(warm, e) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_describe_lists_every_field():
    lines = C.describe(C.preset("rd3")).splitlines()
    assert [line.split("=")[0].strip() for line in lines] == list(C.FIELD_NAMES)


def test_help_shows_every_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in C.FIELD_NAMES:
        if name != "preset":
            assert C.flag(name) in out
