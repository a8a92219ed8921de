"""Model and tokenizer paths that cannot be loaded are named as such, before transformers guesses at them."""

import pytest

from tempo_pl.models.builders import CriticSpec, ModelSpec, build_critic, build_policy, build_tokenizer


@pytest.mark.parametrize("name", ["./no_such_model", "runs/sft/policy", "/no/such/folder"])
def test_a_model_path_that_does_not_exist_says_so(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for build in (lambda: build_tokenizer(ModelSpec(name_or_path=name)),
                  lambda: build_policy(ModelSpec(name_or_path=name)),
                  lambda: build_critic(CriticSpec(name_or_path=name))):
        with pytest.raises(FileNotFoundError) as error:
            build()
        message = str(error.value)
        assert f".name_or_path: the path {name!r} does not exist" in message and "Repo id" not in message


def test_a_model_folder_without_config_json_says_config_json_is_missing(tmp_path):
    folder = tmp_path / "half_saved"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    expected = (f"ModelSpec.name_or_path: the folder {str(folder)!r} has no config.json, so it is not a saved model "
                "(it holds: model.safetensors); point at the folder save_pretrained wrote")
    with pytest.raises(FileNotFoundError) as error:
        build_tokenizer(ModelSpec(name_or_path=str(folder)))
    assert str(error.value) == expected and "sentencepiece" not in str(error.value)
    # with tokenizer files the tokenizer loads from the folder; the model still needs config.json
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="ModelSpec.name_or_path: the folder .* has no config.json"):
        build_policy(ModelSpec(name_or_path=str(folder)))
    with pytest.raises(FileNotFoundError, match="CriticSpec.name_or_path: the folder .* has no config.json"):
        build_critic(CriticSpec(name_or_path=str(folder)))


def test_a_tokenizer_folder_without_tokenizer_files_and_a_file_path(tmp_path, tiny_policy_spec):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    spec = ModelSpec(config=tiny_policy_spec.config, tokenizer=str(folder))
    with pytest.raises(FileNotFoundError, match=r"ModelSpec.tokenizer: the folder .* has no tokenizer file "
                                                r"\(tokenizer.json / tokenizer_config.json"):
        build_tokenizer(spec)
    with pytest.raises(NotADirectoryError, match="is a file; expected a model folder or a Hub repo id"):
        build_tokenizer(ModelSpec(name_or_path=str(folder / "config.json")))


def test_a_hub_shaped_name_that_is_not_local_names_both_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # offline (conftest): the Hub lookup fails at once
    with pytest.raises(OSError, match=r"ModelSpec.name_or_path: 'someorg/nomodel' is no local folder \(relative to "
                                      r".*\) and could not be loaded from the Hugging Face Hub: "):
        build_tokenizer(ModelSpec(name_or_path="someorg/nomodel"))


def test_a_saved_model_folder_still_loads(tmp_path, tiny_policy_spec):
    policy = build_policy(tiny_policy_spec)
    policy.save_pretrained(tmp_path / "saved")
    build_tokenizer(tiny_policy_spec).save_pretrained(tmp_path / "saved")
    spec = ModelSpec(name_or_path=str(tmp_path / "saved"))
    assert build_tokenizer(spec).eos_token == "<|im_end|>"
    assert build_policy(spec).config.hidden_size == policy.config.hidden_size
