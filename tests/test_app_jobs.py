"""`app.jobs.job_state`: how every background job of the app (probe, attention, exact re-plan, sweep,
UMAP's cached file) is judged by what it makes, in one place."""

from __future__ import annotations

import os

from app import jobs


def test_a_running_job_says_how_far_it_got(tmp_path):
    target = tmp_path / "product.parquet"
    jobs.lock_path(target).write_text(str(os.getpid()))  # a live pid: the job runs
    assert jobs.job_state(target, lambda: "made") == ("running", None)  # running wins over a product
    (tmp_path / "product.parquet.progress").write_text("step 3 of 9\n")
    assert jobs.job_state(target, lambda: None) == ("running", "step 3 of 9")
    assert jobs.job_state(target, lambda: None, how_far=lambda: "12 of 40 cells") == ("running", "12 of 40 cells")


def test_an_ended_job_is_done_failed_or_never_ran(tmp_path):
    target = tmp_path / "product.parquet"
    jobs.lock_path(target).write_text("999999999")  # no such process: the job has ended
    assert jobs.job_state(target, lambda: None) == ("none", None)
    assert jobs.job_state(target, lambda: target) == ("done", target)
    jobs.error_path(target).write_text("model folder is empty\n")
    assert jobs.job_state(target, lambda: None) == ("failed", "model folder is empty")
    # The product's own account of a failure comes first; without one, the job's error line.
    said = jobs.job_state(target, lambda: None, why_failed=lambda: "interrupted after 40 steps")
    assert said == ("failed", "interrupted after 40 steps")
    assert jobs.job_state(target, lambda: None, why_failed=lambda: None) == ("failed", "model folder is empty")
    # A product that is there is done, whatever an earlier attempt left.
    assert jobs.job_state(target, lambda: "made", why_failed=lambda: "stale") == ("done", "made")


def test_a_job_that_only_printed_its_error_is_failed_with_that_line(tmp_path):
    target = tmp_path / "umap.parquet"
    (tmp_path / "umap.parquet.log").write_text("loading\nerror: no gists in this run\n")
    assert jobs.file_state(target, lambda p: None) == ("failed", "no gists in this run")
