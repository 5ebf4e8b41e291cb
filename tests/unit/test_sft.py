"""`rlft sft`: supervised fine-tuning on the rows' demonstrations (tiny model)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlft.cli import main
from rlft.commands.sft import SUMMARY, demonstration_batch, run_sft
from rlft.config import load_config
from rlft.data.prompts import build_prompts
from rlft.models import load_tokenizer


def test_demonstration_batch_masks_the_prompt(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    rows = [{"prompt": "2 + 3 =", "demonstration": "5"}, {"prompt": "say hi", "demonstration": "hi"}]
    prompts = build_prompts(rows, tok).prompts
    batch = demonstration_batch(list(prompts), tok, tok.pad_token_id)
    for b, p in enumerate(prompts):
        n = len(p.prompt_ids)
        resp = batch.response_mask[b].nonzero().flatten().tolist()
        assert resp[0] == n  # the first loss token follows the prompt
        assert batch.input_ids[b, resp[-1]] == tok.eos_token_id  # EOS carries loss too
        assert tok.decode(batch.input_ids[b, resp[:-1]]).strip() == p.demonstration
    assert batch.expert_mask.all()


def test_rlft_sft_lowers_the_loss_and_writes_a_loadable_folder(tmp_path, tiny_model_path):
    out = tmp_path / "sft-model"
    code = main(["sft", f"model.name={tiny_model_path}", "data.source=builtin:arithmetic",
                 "sft.steps=6", "sft.batch_size=4", "sft.lr=1.0e-2", f"sft.out={out}"])
    assert code == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert len(summary["losses"]) == 6
    assert summary["eval_nll_after"] < summary["eval_nll_before"] - 0.5, summary

    # The folder loads with plain transformers and scores the fixed demonstrations as the
    # learner did at the end: the export holds the trained weights.
    cfg = load_config(None, [f"model.name={tiny_model_path}", "sft.batch_size=4"])
    tok = AutoTokenizer.from_pretrained(out)
    from rlft.run.wiring import build_prompts_for

    sampler, pad_id = build_prompts_for(cfg)
    batch = demonstration_batch(list(sampler.prompts[:4]), load_tokenizer(tiny_model_path),
                                pad_id)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids,
                       attention_mask=batch.attention_mask.long()).logits  # [B, L, V]
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
        -1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
    nll = float(-lp[batch.response_mask[:, 1:]].mean())
    assert nll == pytest.approx(summary["eval_nll_after"], abs=1e-4)
    assert tok.eos_token_id == load_tokenizer(tiny_model_path).eos_token_id


def test_sft_refuses_an_existing_folder_and_rows_without_demonstrations(tmp_path,
                                                                        tiny_model_path):
    (tmp_path / "taken").mkdir()
    cfg = load_config(None, [f"model.name={tiny_model_path}", "sft.steps=1"])
    with pytest.raises(FileExistsError, match="sft.out"):
        run_sft(cfg, tmp_path / "taken")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "answer": "1"}) + "\n")
    cfg = load_config(None, [f"model.name={tiny_model_path}", f"data.source={data}",
                             "sft.steps=1", "sft.batch_size=1"])
    with pytest.raises(ValueError, match="no `demonstration`"):
        run_sft(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
