"""Which tests start a child process or a server, for the test tiers (tests/conftest.py).

Kept in one place rather than as decorators, so the tiers can be read and changed at a glance. In the fast
tier a guard fails any test that starts a child process, a server or the engine without being listed here
(or marked), so a test that comes to need one says so the first time it runs there. A node id without
parameters covers every parametrized case.
"""

from __future__ import annotations

# Tests that start an engine of their own in a child process (tens of seconds each on 2 cores): slow, so
# left out of the middle tier, whose one engine is the session's.
SLOW = (
    "tests/test_engine.py::test_the_engine_core_exiting_cleanly_fails_every_waiting_request",
    "tests/test_run.py::test_cli_run_end_to_end",
)

SUBPROCESS = (
    "tests/test_session_replay.py::test_bad_session_replays_stop_with_one_line_and_write_nothing",
    "tests/test_session_replay.py::test_a_request_trace_refuses_session_flags",
    "tests/test_session_importers.py::test_bad_input_through_the_cli",
    "tests/test_session_importers.py::test_cli_import_writes_a_readable_trace",
    "tests/test_trace_stats.py::test_cli_plain_text_when_piped_and_json",
    "tests/stress/test_stress_entry.py::test_bench_stress_mistakes_are_one_line_and_exit_2",
    "tests/stress/test_stress_entry.py::test_bench_stress_runs_one_test_through_the_cli",
    "tests/stress/test_stress_suite.py::test_a_burstgpt_file_drives_a_run_and_a_bad_one_stops_it_before_any_output",
    "tests/stress/test_stress_suite.py::test_one_test_run",
    "tests/stress/test_stress_suite.py::test_results_are_identical_with_two_workers_and_the_same_seed",
    "tests/test_ab.py::test_cli_usage_error_is_one_line_exit_2_nothing_written",
    "tests/test_bad_input.py::test_a_refused_resume_writes_nothing",
    "tests/test_bad_input.py::test_bad_input",
    "tests/test_cache_lock.py::test_concurrent_processes_lose_no_cache_entry",
    "tests/test_endpoints.py::test_a_wrong_base_url_is_a_usage_error_naming_it",
    "tests/test_engine_args.py::test_a_mistyped_engine_arg_is_refused_without_importing_vllm",
    "tests/test_engine_args.py::test_the_cli_refuses_a_bad_engine_arg_with_exit_2_and_writes_nothing",
    "tests/test_flow_graph.py::test_a_bad_graph_stops_bench_run_with_one_line_and_writes_nothing",
    "tests/test_import_hygiene.py::test_the_cli_does_not_import_numba_or_llvmlite",
    "tests/test_live_summary.py::test_a_failing_summary_is_a_warning_and_the_worker_carries_on",
    "tests/test_live_summary.py::test_a_hung_worker_is_killed_at_finish_with_a_warning",
    "tests/test_live_summary.py::test_a_killed_worker_is_a_warning_and_finish_returns",
    "tests/test_live_summary.py::test_ctrl_c_to_the_process_group_leaves_the_worker_to_the_run",
    "tests/test_live_summary.py::test_started_returns_once_the_worker_has_imported_what_it_needs",
    "tests/test_live_summary.py::test_the_worker_imports_neither_vllm_nor_torch",
    "tests/test_live_summary.py::test_the_worker_writes_what_the_files_say_and_ends_with_finish",
    "tests/test_monitor.py::test_an_ignored_child_is_not_counted_as_an_engine_process",
    "tests/test_monitor.py::test_samples_cover_children_and_phases",
    "tests/test_presets.py::test_gpu_check_accepts_a_run_that_did_what_it_asked",
    "tests/test_presets.py::test_gpu_check_fails_on_each_mismatch",
    "tests/test_presets.py::test_gpu_check_wants_nvml_samples_and_a_complete_run",
    "tests/test_presets.py::test_gpu_check_without_a_gpu_says_so_and_installs_nothing",
    "tests/test_records.py::test_a_directory_from_a_newer_flowperf_is_refused",
    "tests/test_replay.py::test_bad_replays_stop_with_one_line_and_write_nothing",
    "tests/test_sandbox.py::test_a_power_tower_is_left_associative_and_harmless",
    "tests/test_sandbox.py::test_lipsum_text_of_any_size_is_not_offered",
    "tests/test_sandbox.py::test_memory_and_cpu_bombs_are_refused",
    "tests/test_sandbox.py::test_size_bombs_beyond_the_binary_operators_are_refused",
    "tests/test_server_registry.py::test_a_member_that_cannot_start_stops_the_ones_started_with_it",
    "tests/test_server_registry.py::test_a_replica_set_starts_together_and_is_reused_as_a_set",
    "tests/test_server_registry.py::test_a_run_that_ends_marks_its_server_most_recently_used",
    "tests/test_server_registry.py::test_a_set_restarts_only_its_missing_members",
    "tests/test_server_registry.py::test_a_started_server_survives_the_killing_of_the_run_s_descendants",
    "tests/test_server_registry.py::test_each_replica_sees_only_its_own_gpus",
    "tests/test_server_registry.py::test_eviction_never_stops_a_server_a_live_run_holds",
    "tests/test_server_registry.py::test_runs_asking_at_once_share_one_new_server",
    "tests/test_sweep.py::test_usage_errors_exit_2_with_one_line_and_write_nothing",
    "tests/test_workers.py::test_an_unreachable_ray_cluster_is_a_usage_error_before_anything_is_written",
    "tests/test_workers.py::test_processes_appending_to_one_log_never_tear_each_others_lines",
    "tests/test_workers.py::test_workers_with_the_in_process_engine_is_a_usage_error",
)

SERVER = (
    "tests/test_session_replay.py::test_session_load_closed_loop_and_poisson_on_the_mock_server",
    "tests/test_crash_safety.py::test_a_failed_warm_up_through_the_cli_exits_3_with_its_reason",
    "tests/test_ab.py::test_identical_arms_share_one_engine_and_do_not_regress",
    "tests/test_ab.py::test_two_engines_a_real_slowdown_is_a_regression",
    "tests/test_agentic_runs.py::test_a_conversation_sends_the_whole_transcript_as_chat_messages",
    "tests/test_agentic_runs.py::test_a_failed_branch_fails_its_workflow_and_keeps_what_ran",
    "tests/test_agentic_runs.py::test_branches_run_side_by_side_and_the_makespan_follows_the_critical_path",
    "tests/test_agentic_runs.py::test_tool_and_think_pauses_take_their_drawn_time",
    "tests/test_endpoints.py::test_a_dead_replica_stops_the_run_at_start_naming_it",
    "tests/test_endpoints.py::test_config_json_and_engine_info_record_every_replica",
    "tests/test_endpoints.py::test_every_replica_must_serve_the_model",
    "tests/test_endpoints.py::test_round_robin_spreads_requests_one_by_one",
    "tests/test_endpoints.py::test_session_routing_keeps_each_workflow_on_one_replica_split_by_index",
    "tests/test_endpoints.py::test_the_engine_says_which_replica_served_each_request",
    "tests/test_mock_server.py::test_faults_by_config_or_prompt",
    "tests/test_mock_server.py::test_http_error_status_and_loopback_only",
    "tests/test_mock_server.py::test_it_stops_by_itself_and_with_its_parent",
    "tests/test_mock_server.py::test_the_api_key_is_written_nowhere_by_an_openai_run",
    "tests/test_mock_server.py::test_tokens_follow_an_absolute_schedule_recorded_on_the_servers_clock",
    "tests/test_openai_http.py::test_a_stream_without_a_finish_reason_is_truncated",
    "tests/test_openai_http.py::test_an_error_event_inside_a_200_stream_fails_the_step",
    "tests/test_openai_http.py::test_chat_api_reads_deltas",
    "tests/test_openai_http.py::test_fewer_tokens_than_a_fixed_length_request_asked_for_is_truncated",
    "tests/test_openai_http.py::test_http_errors_and_hung_servers_fail_the_step",
    "tests/test_openai_http.py::test_streamed_completion_is_measured_from_token_ids_usage_and_metrics",
    "tests/test_openai_http.py::test_ttft_starts_when_the_request_is_sent_not_while_it_waits_for_a_connection",
    "tests/test_replay.py::test_the_mock_server_sees_the_trace_its_ids_lengths_and_timing",
    "tests/test_sweep.py::test_a_saturated_open_loop_level_is_stopped_early_and_counts_what_it_abandoned",
    "tests/test_sweep.py::test_compare_two_sweeps_level_by_level",
    "tests/test_sweep.py::test_resume_after_ctrl_c_continues_at_the_interrupted_level",
    "tests/test_sweep.py::test_slo_attainment_follows_the_mock_servers_ttft",
    "tests/test_sweep.py::test_the_command_runs_a_sweep_and_writes_html",
)
