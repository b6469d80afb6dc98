import pytest

from eggroll_rl.config import ConfigError, from_dict, load_config, to_dict
from eggroll_rl.settings import parse_overrides

from support import ROOT

TINY = ROOT / "recipes" / "tiny.yaml"


def test_overrides_with_dot_paths_and_yaml_values():
    cfg = load_config(TINY, ["es.sigma=0.002", 'generation.stop=["\\n\\n"]', "train.steps=7", "model=foo"])
    assert cfg.es.sigma == 0.002 and cfg.train.steps == 7 and cfg.model == "foo"
    assert cfg.generation.stop == ["\n\n"]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("es.sigmaa=1", "unknown key 'es.sigmaa'; did you mean 'es.sigma'?"),
        ("bogus=1", "unknown key 'bogus'"),
        ("es.population=7", "es.population: got 7"),
        ("es.rank=two", "es.rank: got 'two'"),
        ("es.optimizer=rmsprop", "expected one of 'sgd', 'adam'"),
        ("generation.samples_per_prompt=4", None),  # valid: the tiny recipe samples
        ("generation.temperature=0", None),
        ("data.prompt_template={foo}", "data.prompt_template"),
        ("es.targets=[]", "es.targets: empty"),
        ("es.targets=['(']", "not a valid regular expression"),
        ("es.sigma=-1", "es.sigma: got -1.0"),
        ("train.steps=0", "train.steps: got 0"),
        ("nonsense", "not of the form key=value"),
        ("es.sigma.x=1", "es.sigma: got {'x': 1}"),
    ],
)
def test_bad_recipes_fail_with_one_line(override, fragment):
    if fragment is None:
        load_config(TINY, [override])
        return
    with pytest.raises(ConfigError) as exc:
        load_config(TINY, [override])
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_greedy_with_many_samples_is_impossible():
    with pytest.raises(ConfigError, match="needs generation.temperature > 0"):
        load_config(TINY, ["generation.temperature=0", "generation.samples_per_prompt=4"])


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("es: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips():
    cfg = load_config(TINY, ["es.adam_betas=[0.8, 0.9]"])
    assert from_dict(to_dict(cfg)) == cfg
    assert cfg.es.adam_betas == (0.8, 0.9)


def test_reward_shorthand():
    cfg = load_config(TINY, ["rewards=math_accuracy"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("math_accuracy", 1.0)]


def test_a_data_file_named_in_a_recipe_is_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "rows.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    recipe = folder / "r.yaml"
    recipe.write_text("model: tiny-random\ndata:\n  path: data/rows.jsonl\n  eval_split: openai/gsm8k\n")
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    cfg = load_config(recipe)
    assert cfg.data.path == str((folder / "data" / "rows.jsonl").resolve())
    assert cfg.data.eval_split == "openai/gsm8k"  # no such file there: a hub split name stays
    assert load_config(recipe, ["data.path=other.jsonl"]).data.path == "other.jsonl"  # overrides: as given


def test_report_to_takes_a_single_tracker_as_transformers_does():
    assert load_config(None, ["model=m", "data.path=d.jsonl", "report_to=tensorboard"]).report_to == ["tensorboard"]
    assert load_config(None, ["model=m", "data.path=d.jsonl", "report_to=wandb,tensorboard"]).report_to == ["wandb", "tensorboard"]
    assert load_config(None, ["model=m", "data.path=d.jsonl", "report_to=[none]"]).report_to == ["none"]
    with pytest.raises(ConfigError, match="report_to: unknown tracker 'tensorbord'"):
        load_config(None, ["model=m", "data.path=d.jsonl", "report_to=tensorbord"])
