"""The `pophealth` command: one sub-command for every job a user runs.

pophealth setup                       prepare the warehouse and Airflow's metadata database
pophealth synth --population N --seed S --out PATH [--delivery monthly|annual|ytd] [--councils E10000012,...]
pophealth pseudonymise IN_FILE OUT_FILE --lookup ref_postcode_lookup.csv   at a source, before sending
pophealth run [--landing PATH]        the whole pipeline through Airflow (synthetic demo without --landing)
pophealth dag DAG_ID [--landing PATH] one DAG through Airflow (`pophealth dag --help` lists the DAG ids)
pophealth status [--json]             the latest period of each source, the marts' freshness, the next delivery
pophealth db url | stop               the warehouse in use
pophealth cluster up [--landing P] [--wait] | down | status | load   the deployment on real servers
pophealth docs [--port N | --static]  the dbt documentation site, served on 127.0.0.1
pophealth board-report [--out PATH] [--synthetic]   the board report (static HTML) from the reporting schema
pophealth reidentify PERSON_ID... --purpose CODE --on-behalf-of NAME   direct care, audited, bounded
pophealth reidentify --request N      collect a request a Caldicott guardian approved
pophealth approve-reidentification N --note TEXT [--refuse]   a Caldicott guardian's decision
pophealth rotate-key --new-key-file PATH   key custodian: re-key the warehouse
pophealth rotate-key --vault --new-public-key-file PATH   key custodian: re-encrypt the vault to a new key pair
pophealth vault-key-pair --private-key-file PATH --public-key-file PATH   key custodian: a new vault key pair
pophealth ig-report [--out PATH]      the information governance audit (HTML) from the live warehouse
pophealth quasi-identifiers           how many people each person-level mart singles out (counts only)
pophealth register [--write-seed]     check the data sharing register (and write its dbt seed)
pophealth ui [--port N] [--landing PATH]   the Airflow web UI on 127.0.0.1
pophealth rerun --feed F --period YYYY-MM-DD [--provider P]   re-run a past period, then the marts
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from pophealth import config

DEMO_POPULATION = 20_000
DEMO_SEED = 42


def _say(text: str) -> None:
    print(text, flush=True)


@contextmanager
def _still_working(what: str, every: float = 15.0):
    """A line every `every` seconds while a long step runs, so a silent terminal never looks hung; ends with it."""
    stop = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not stop.wait(every):
            _say(f"  ... {what} ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every)


def _ensure_keys_for_demo() -> None:
    from pophealth.identity.keys import ALL_KEYS, ensure_demo_key

    keys_dir = config.paths().demo_keys_dir
    for source, file_name in ALL_KEYS:
        if os.environ.get(source.env) or os.environ.get(source.env_file):
            continue
        key_file = keys_dir / file_name
        if ensure_demo_key(key_file):
            _say(
                f"Created a random {source.purpose} for this local demo in {key_file} (mode 600). "
                f"A real deployment gets its key from the key custodian: set {source.env_file}."
            )
        os.environ[source.env_file] = str(key_file)


def cmd_synth(args: argparse.Namespace) -> int:
    from pophealth.synth import write_world

    out = Path(args.out)
    councils = _councils(args.councils)
    _say(
        f"Writing a synthetic world of {args.population:,} people (seed {args.seed}; councils "
        f"{', '.join(councils)}) to {out} ..."
    )
    with _still_working("generating"):
        summary = write_world(
            out, population=args.population, seed=args.seed, delivery=args.delivery, councils=councils
        )
    _say(f"Done: {summary.get('people', '?')} people; the answer key is in {out / 'answer_key'}")
    return 0


def cmd_pseudonymise(args: argparse.Namespace) -> int:
    from pophealth.ingest.at_source import AtSourceRefused, pseudonymise_extract, summary_text

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        summary = pseudonymise_extract(
            Path(args.in_file), Path(args.out_file), Path(args.lookup) if args.lookup else None, progress=progress
        )
    except AtSourceRefused as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    _say(summary_text(summary))
    return 0


def _councils(text: str) -> tuple[str, ...]:
    """--councils E10000012,E06000033: the council codes, each one the generator knows."""
    from pophealth.synth.geography import COUNCILS

    councils = tuple(dict.fromkeys(c.strip().upper() for c in text.split(",") if c.strip()))
    unknown = [c for c in councils if c not in COUNCILS]
    if not councils or unknown:
        raise SystemExit(
            f"pophealth synth: --councils takes codes among {', '.join(COUNCILS)}"
            + (f"; not {', '.join(unknown)}" if unknown else "")
        )
    return councils


def _demo_landing(population: int, seed: int) -> Path:
    """The demo's world: Mid and South Essex, its three councils (one platform, each council's BCF)."""
    import json

    from pophealth.synth import MID_AND_SOUTH_ESSEX, make_private, write_world

    out = config.paths().demo_world / f"population-{population}-seed-{seed}-mse"
    marker = out / "answer_key" / "world.json"
    if marker.exists():
        world = json.loads(marker.read_text())
        if (
            world.get("population") == population
            and world.get("seed") == seed
            and world.get("councils") == list(MID_AND_SOUTH_ESSEX)
        ):
            make_private(out)  # a world generated by an older version was left readable by everyone
            _say(f"Using the synthetic world already generated in {out}")
            return out
    _say(
        f"Generating a synthetic population of {population:,} people in Mid and South Essex's three councils "
        f"and its extracts in {out} ..."
    )
    with _still_working("generating"):
        write_world(out, population=population, seed=seed, councils=MID_AND_SOUTH_ESSEX)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from pophealth.operate.pipeline import run_pipeline
    from pophealth.operate.run_summary import summarise
    from pophealth.warehouse import db

    if args.landing:
        landing = Path(args.landing)
    else:
        _ensure_keys_for_demo()
        landing = _demo_landing(args.population, args.seed)
    config.remember_landing(landing)  # `pophealth status` looks there for what is waiting
    _say(f"Warehouse: {db.warehouse_shown()}" + (" (embedded PostgreSQL)" if db.is_embedded() else ""))
    with _still_working("running", every=30.0):
        outcome = run_pipeline(landing, progress=_say)
    outcome.write()  # outcome.json beside the run's logs: each DAG's state and time, for programs (the benchmark)
    _say(summarise(outcome))
    if outcome.succeeded:
        from pophealth.reports.board_report import synthetic_marker, write_board_report

        # The warehouse now holds the generated world (no --landing) or real extracts: the report's banner says so.
        marker = synthetic_marker()
        if args.landing:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("pophealth run loaded the synthetic demo world\n", encoding="utf-8")
        report = config.paths().home / "reports" / "board_report.html"
        write_board_report(report)
        _say(f"\nBoard report (from reporting only; open it in a browser): {report}")
    return 0 if outcome.succeeded else 1


def cmd_dag(args: argparse.Namespace) -> int:
    from pophealth.operate.pipeline import run_pipeline
    from pophealth.operate.run_summary import summarise

    landing = Path(args.landing) if args.landing else config.landing_dir()
    if landing is None:
        _say(f"give --landing PATH or set {config.ENV_LANDING_DIR}")
        return 2
    config.remember_landing(landing)
    with _still_working(f"running {args.dag_id}", every=30.0):
        outcome = run_pipeline(landing, dag_ids=(args.dag_id,), progress=_say)
    outcome.write()
    _say(summarise(outcome))
    return 0 if outcome.succeeded else 1


def cmd_setup(args: argparse.Namespace) -> int:
    from pophealth.marts.build import parse_project
    from pophealth.operate.airflow_runner import ensure_metadata_db
    from pophealth.warehouse import db
    from pophealth.warehouse.schema import prepare_warehouse

    prepare_warehouse()
    if not args.warehouse_only:
        ensure_metadata_db()
    _say(f"dbt manifest: {parse_project()}")
    _say(f"Warehouse ready: {db.warehouse_shown()}")
    if not args.warehouse_only:
        _say(f"Airflow home: {config.paths().airflow_home}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from pophealth.operate.status import collect

    status = collect(Path(args.landing) if args.landing else None)
    _say(json.dumps(status.as_json(), indent=2, default=str) if args.json else status.text())
    return 0 if status.healthy else 1


def cmd_docs(args: argparse.Namespace) -> int:
    from pophealth.marts.build import DbtFailed
    from pophealth.marts.dbt_docs import generate, serve

    _say("Generating the dbt documentation site (dbt docs generate: compile, then the catalog from the warehouse) ...")
    try:
        with _still_working("dbt docs generate"):
            site = generate(static=args.static)
    except DbtFailed as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 1
    _say(f"Generated in {site.seconds:.0f} s: {site.folder}")
    if args.static:
        _say(f"Single-file site (open it in a browser): {site.static_index}")
        return 0
    try:
        server = serve(site, args.port)
    except OSError as exc:
        print(f"pophealth: cannot serve on 127.0.0.1:{args.port}: {exc.strerror} (try --port)", file=sys.stderr)
        return 2
    _say(f"Serving the documentation on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops it)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            _say("stopped")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from pophealth.warehouse import db

    if args.action == "url":
        _say(db.warehouse_url())
    elif args.action == "stop":
        _say("embedded PostgreSQL stopped" if db.stop_embedded() else "the embedded PostgreSQL was not running")
    return 0


def cmd_board_report(args: argparse.Namespace) -> int:
    from pophealth.reports.board_report import write_board_report

    out = Path(args.out) if args.out else config.paths().home / "reports" / "board_report.html"
    summary = write_board_report(out, synthetic=True if args.synthetic else None)
    _say(
        f"Board report ({summary['charts']} charts, {summary['tables']} tables"
        + (", synthetic data" if summary["synthetic"] else "")
        + f"): {out.resolve()}"
    )
    for table in summary["missing"]:
        _say(f"  not in the report yet: {table} (build the marts first)")
    return 0


def cmd_ig_report(args: argparse.Namespace) -> int:
    from pophealth.governance.ig_report import write_ig_report

    out = Path(args.out) if args.out else config.paths().home / "reports" / "ig_report.html"
    summary = write_ig_report(out)
    _say(f"Information governance audit: {out.resolve()}")
    _say(
        f"  {summary['agreements']} agreements, {summary['loads']} loads, "
        f"{summary['lineage_links']} column lineage links, {summary['reidentifications']} re-identification requests"
    )
    from pophealth.governance.chain import summary_lines
    from pophealth.operate.status import RED, RESET

    for ok, line in summary_lines(summary["chains"]):
        _say("  " + line if ok else f"  {RED}{line}{RESET}")
    _say(
        f"  identifiable-value scan of {summary['columns_scanned']} columns: "
        + ("PASS" if summary["scan_clean"] else f"FAIL ({summary['findings']} column(s) hold identifiable values)")
    )
    for relation, column, kind, rows in summary["finding_list"]:  # where and what kind, never the value
        _say(f"  {RED}{relation}.{column}: {kind} in {rows:,} row(s){RESET}")
    most = summary["most_unique"]
    if most is not None:
        _say(
            f"  most singled out on quasi-identifiers: {most.mart}, {most.unique:,} of {most.people:,} people unique "
            f"({most.share_unique:.1%}); all marts: pophealth quasi-identifiers"
        )
    return 0 if summary["scan_clean"] and all(c.intact for c in summary["chains"]) else 1


def cmd_quasi_identifiers(args: argparse.Namespace) -> int:
    from pophealth.governance.disclosure import quasi_identifier_uniqueness, uniqueness_text
    from pophealth.warehouse import db

    with db.connect() as conn:
        _say(uniqueness_text(quasi_identifier_uniqueness(conn)))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from pophealth.contract.agreements import RegisterInvalid, load_register, register_path, write_seed

    try:
        register = load_register()
    except RegisterInvalid as exc:
        _say(f"The data sharing register is not valid: {exc}")
        return 1
    _say(f"Data sharing register {register_path()}: version {register.version}, {len(register.agreements)} agreements")
    if args.write_seed:
        _say(f"  written to the dbt seed {write_seed()}")
    return 0


def cmd_fit_risk_model(args: argparse.Namespace) -> int:
    from pophealth.marts.build import dbt_build
    from pophealth.marts.risk_model import FitFailed, append_to_seed, fit_from_warehouse

    try:
        model = fit_from_warehouse()
    except FitFailed as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    version = append_to_seed(model)
    _say(
        f"Risk model version {version}: fitted on {model.people:,} people on the register at "
        f"{model.fitted_as_of} ({model.outcomes:,} had an emergency admission in the next 12 months)"
    )
    for term, coefficient in zip(model.terms, model.coefficients, strict=False):
        _say(f"  {term:<24} {coefficient:+.4f}")
    _say(f"  c-statistic on the fitting sample: {model.c_statistic:.3f}")
    _say("Rebuilding the risk model's marts (dbt build) ...")
    with _still_working("dbt build"):
        proc = dbt_build(["--select", "risk_model_coefficient+"])
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        return 1
    from pophealth.warehouse import db

    with db.connect() as conn:
        rows = conn.execute("""SELECT risk_tier, people, share_of_emergency_admissions, c_statistic, evaluated_as_of
                               FROM marts.risk_model_evaluation ORDER BY tier_order""").fetchall()
    _say(f"Evaluated on other people at {rows[0][4]} (marts.risk_model_evaluation): c-statistic {rows[0][3]}")
    for tier, people, share, _c, _d in rows:
        _say(f"  {tier:<10} {people:>9,} people  {share}% of the next year's emergency admissions")
    _say(
        f"The new version is in {config.paths().dbt_project_dir / 'seeds' / 'risk_model_coefficient.csv'}: "
        "review it and commit it."
    )
    return 0


def _vault_private_key():
    """The vault's private key, for the re-identification path and the custodian's rotations only. The local demo
    keeps it in POPHEALTH_HOME/keys/vault_private.key, which its pipeline is never given."""
    from pophealth.identity.keys import demo_vault_private_key_file, load_vault_private_key

    if not (os.environ.get(config.ENV_VAULT_PRIVATE_KEY) or os.environ.get(config.ENV_VAULT_PRIVATE_KEY_FILE)):
        demo = demo_vault_private_key_file()
        if demo.exists():
            os.environ[config.ENV_VAULT_PRIVATE_KEY_FILE] = str(demo)
    return load_vault_private_key()


def cmd_reidentify(args: argparse.Namespace) -> int:
    from pophealth.identity.keys import KeyError_
    from pophealth.identity.vault import VaultError, reidentify

    if args.request is None and (not args.person_ids or not args.purpose or not args.on_behalf_of):
        print(
            "pophealth: name the people (PERSON_ID ...), --purpose and --on-behalf-of; or --request N to collect "
            "an approved request",
            file=sys.stderr,
        )
        return 2
    try:
        result = reidentify(
            args.person_ids, args.purpose, args.on_behalf_of, _vault_private_key(), request_id=args.request
        )
    except (VaultError, KeyError_) as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    _say(f"Re-identification request {result.request_id} is in the audit log (audit.reidentification).")
    for person_id, number in result.found.items():
        _say(f"{person_id}  {number.reveal_for_direct_care()}")
    for person_id in result.not_found:
        _say(f"{person_id}  not in the vault (unknown, opted out, or never linked)")
    return 0 if result.found else 1


def cmd_approve_reidentification(args: argparse.Namespace) -> int:
    from pophealth.identity.vault import VaultError, decide

    try:
        outcome = decide(args.request, not args.refuse, args.note)
    except VaultError as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    _say(f"Request {args.request}: {outcome} (audit.reidentification_approval).")
    return 0


def cmd_vault_key_pair(args: argparse.Namespace) -> int:
    from pophealth.identity.keys import write_vault_key_pair

    private, public = Path(args.private_key_file), Path(args.public_key_file)
    if private.exists() or public.exists():
        print("pophealth: a key file is never overwritten: name new files", file=sys.stderr)
        return 2
    key = write_vault_key_pair(private, public)
    _say(
        f"A new vault key pair {key.version}: the private key in {private} (mode 600) for the key custodian and "
        f"`pophealth reidentify` only; the public key in {public} for the pipeline "
        f"({config.ENV_VAULT_PUBLIC_KEY_FILE})."
    )
    return 0


def _rotate_vault_key(path: Path) -> int:
    from pophealth.identity.keys import KeyError_, VaultPublicKey
    from pophealth.identity.rekey import RotationRefused, rotate_vault_key

    try:
        new = VaultPublicKey.from_hex(path.read_text(), str(path))
        rotation = rotate_vault_key(_vault_private_key(), new, progress=_say)
    except (RotationRefused, KeyError_) as exc:
        print(f"pophealth: vault key rotation refused, nothing was changed: {exc}", file=sys.stderr)
        return 2
    _say(f"The vault is now encrypted to {rotation.new_version} (was {rotation.old_version}).")
    _say(
        f"Next: point {config.ENV_VAULT_PUBLIC_KEY_FILE} at {path} for the pipeline, "
        f"{config.ENV_VAULT_PRIVATE_KEY_FILE} at the new private key for `pophealth reidentify`, and destroy the "
        "old private key."
    )
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from pophealth.identity.keys import KeyError_, LinkageKey, load_linkage_key

    if args.vault:
        if not args.new_public_key_file or not Path(args.new_public_key_file).is_file():
            print(
                "pophealth: --vault needs --new-public-key-file, an existing file (pophealth vault-key-pair)",
                file=sys.stderr,
            )
            return 2
        return _rotate_vault_key(Path(args.new_public_key_file))
    if not args.new_key_file:
        print("pophealth: give --new-key-file (or --vault --new-public-key-file)", file=sys.stderr)
        return 2
    path = Path(args.new_key_file)
    if not path.is_file():
        print(f"pophealth: the new key file does not exist: {path}", file=sys.stderr)
        return 2
    if args.purpose:
        return _rotate_purpose_key(args.purpose, path, rebuild=not args.no_rebuild)
    from pophealth.identity.rekey import RotationRefused, rotate_linkage_key

    new = LinkageKey.from_hex(path.read_text(), str(path))
    try:
        # The vault's private key too: a new pseudonym is made from the NHS number, held only in the vault.
        rotation = rotate_linkage_key(load_linkage_key(), new, _vault_private_key(), progress=_say)
    except (RotationRefused, KeyError_) as exc:
        print(f"pophealth: key rotation refused, nothing was changed: {exc}", file=sys.stderr)
        return 2
    _say(
        f"The warehouse is now keyed with {rotation.new_version} (was {rotation.old_version}). The published ids "
        "(marts, reporting, direct_care) are keyed by purpose and have not changed."
    )
    _say(
        f"Next: point {config.ENV_LINKAGE_KEY_FILE} at the new key, give it to every source that pseudonymises "
        "at source, load the opt-out list again (no marts are built until then), and destroy the old key."
    )
    return 0


def _rotate_purpose_key(purpose: str, path: Path, rebuild: bool) -> int:
    from pophealth.identity.keys import PURPOSE_KEYS
    from pophealth.identity.purposes import PublishedIdsRefused, rotate_purpose_key
    from pophealth.marts.build import dbt_build

    key_class = PURPOSE_KEYS[purpose]
    new = key_class.from_hex(path.read_text(), str(path))
    try:
        rotate_purpose_key(purpose, new, progress=_say)
    except PublishedIdsRefused as exc:
        print(f"pophealth: key rotation refused, nothing was changed: {exc}", file=sys.stderr)
        return 2
    env, env_file = key_class.source.env, key_class.source.env_file
    if rebuild:
        _say("Rebuilding the marts with the new ids ...")
        with config.environment(**{env_file: str(path), env: None}), _still_working("dbt build"):
            proc = dbt_build()
        if proc.returncode != 0:
            print(proc.stdout[-3000:], file=sys.stderr)
            return 1
    _say(f"Next: point {env_file} at the new key and destroy the old one.")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pophealth.operate.webui import serve

    landing = Path(args.landing).resolve() if args.landing else config.landing_dir()
    return serve(port=args.port, landing=landing, say=_say)


def cmd_rerun(args: argparse.Namespace) -> int:
    from pophealth.operate.rerun import RerunRefused, rerun_period

    landing = Path(args.landing) if args.landing else config.landing_dir()
    if landing is None:
        _say(f"give --landing PATH or set {config.ENV_LANDING_DIR}")
        return 2
    try:
        outcome = rerun_period(landing, args.feed, args.period, args.provider, progress=_say)
    except RerunRefused as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    return 0 if outcome.succeeded else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    from pophealth.operate import cluster

    try:
        if args.action == "up":
            cluster.up(Path(args.landing) if args.landing else None, say=_say)
            if args.wait:
                cluster.wait_in_foreground(say=_say)
        elif args.action == "down":
            cluster.down(say=_say)
        elif args.action == "status":
            for name, running in cluster.status().items():
                _say(f"  {name:<14} {'running' if running else 'stopped'}")
        elif args.action == "restart":
            if not args.name:
                _say("give the part to restart: postgres, redis or an Airflow process (pophealth cluster status)")
                return 2
            cluster.restart(args.name, crash=args.crash)
            _say(f"{args.name} restarted")
        elif args.action == "load":
            started = time.monotonic()
            states = cluster.load(Path(args.source) if args.source else None, say=_say)
            _say(f"Loaded through the cluster in {time.monotonic() - started:.0f} s")
            return 0 if set(states.values()) == {"success"} else 1
    except cluster.ClusterError as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    return 0


#: `pophealth --help` lists the commands by who runs them (every command in exactly one group).
ROLES = (
    (
        "Data engineer: runs and watches the pipeline",
        ("setup", "run", "dag", "rerun", "status", "ui", "db", "cluster", "synth", "pseudonymise"),
    ),
    ("Analyst: reads the marts and the reports", ("docs", "board-report", "fit-risk-model")),
    (
        "IG officer and Caldicott guardian: governance and re-identification",
        ("ig-report", "quasi-identifiers", "register", "reidentify", "approve-reidentification"),
    ),
    ("Key custodian: the keys", ("rotate-key", "vault-key-pair")),
)


def _dag_ids() -> tuple[str, ...]:
    """The DAG ids, as pipeline.INGEST_DAGS and MARTS_DAG name them (without importing Airflow to print help)."""
    from pophealth.contract.feeds import LOAD_ORDER

    return (*(f"ingest_{feed}" for feed in LOAD_ORDER), "build_marts")


def _group_by_role(parser: argparse.ArgumentParser, sub) -> None:
    """Replace argparse's one flat list of commands by the same commands grouped by who runs them."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    grouped = [name for _, names in ROLES for name in names]
    missing = set(sub.choices) - set(grouped)
    assert not missing and len(grouped) == len(set(grouped)), f"commands not in exactly one role: {missing}"
    width = max(map(len, grouped)) + 2
    parser.epilog = (
        "\n\n".join(
            title + ":\n" + "\n".join(f"  {name:<{width}}{helps.get(name) or ''}" for name in names)
            for title, names in ROLES
        )
        + "\n\n`pophealth COMMAND --help` says more about each."
    )
    sub._choices_actions.clear()  # the grouped list above replaces the flat one


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pophealth", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below, listed by who runs them"
    )

    p = sub.add_parser("setup", help="prepare the warehouse and Airflow's metadata database")
    p.add_argument(
        "--warehouse-only",
        action="store_true",
        help="the warehouse (schemas, roles, passwords) and the dbt manifest, not Airflow's metadata "
        "database (docker-compose.yml migrates that in its own service, with its own password)",
    )
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("cluster", help="the deployment's topology on this machine: real servers, Celery, two workers")
    p.add_argument("action", choices=["up", "down", "status", "load", "restart"])
    p.add_argument("name", nargs="?", help="restart: postgres, redis, or an Airflow process (worker1, scheduler, ...)")
    p.add_argument("--crash", action="store_true", help="restart: kill the process at once (SIGKILL), as a crash")
    p.add_argument("--landing", help="up: the landing folder the workers read (default: one in the state folder)")
    p.add_argument("--wait", action="store_true", help="up: stay in the foreground; Ctrl-C takes it all down")
    p.add_argument(
        "--from", dest="source", help="load: a folder whose extracts arrive in the landing folder, feed by feed"
    )
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("synth", help="write a synthetic landing folder and its answer key")
    p.add_argument("--population", type=int, required=True)
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--delivery",
        choices=("monthly", "annual", "ytd"),
        default="monthly",
        help="how the hospital extracts are cut into files: a file a month, one for the whole window, or "
        "cumulative year-to-date files every month (the same world and answer key in each)",
    )
    p.add_argument(
        "--councils",
        default="E10000012",
        help="comma-separated council codes: E10000012 (Essex, the default: one council, its lookup "
        "without la_code), E06000033 (Southend-on-Sea), E06000034 (Thurrock); all three for "
        "Mid and South Essex",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("pseudonymise", help="at a source: write the pseudonymised extract of an identifiable one")
    p.add_argument("in_file", metavar="IN_FILE", help="the identifiable extract, named as the contract says")
    p.add_argument(
        "out_file",
        metavar="OUT_FILE",
        help="the pseudonymised extract: a file of the same name in another folder, or that folder",
    )
    p.add_argument("--lookup", help="the postcode lookup (ref_postcode_lookup.csv); not needed for opt-outs")
    p.set_defaults(func=cmd_pseudonymise)

    p = sub.add_parser("run", help="run the whole pipeline through Airflow")
    p.add_argument("--landing", help="a folder of real extracts (default: generate a synthetic demo world)")
    p.add_argument("--population", type=int, default=DEMO_POPULATION, help="size of the synthetic demo world")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.set_defaults(func=cmd_run)

    dags = _dag_ids()
    p = sub.add_parser(
        "dag",
        help="run one DAG through Airflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="DAG ids:\n" + "\n".join(f"  {d}" for d in dags),
    )
    p.add_argument("dag_id", metavar="DAG_ID", choices=dags, help="one of the DAG ids listed below")
    p.add_argument("--landing", help=f"the landing folder (default: {config.ENV_LANDING_DIR})")
    p.set_defaults(func=cmd_dag)

    p = sub.add_parser(
        "status",
        help="latest period of each source, next delivery due, marts freshness, what is "
        "waiting (--json for monitoring)",
    )
    p.add_argument(
        "--landing",
        help=f"the landing folder to look in (default: {config.ENV_LANDING_DIR}, else the "
        "folder the last `pophealth run` or `pophealth dag` used)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="the same as one JSON document, for monitoring (the exit "
        "code is the same: 1 when something needs attention)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("docs", help="generate the dbt documentation site and serve it on 127.0.0.1")
    p.add_argument("--port", type=int, default=8580, help="the port on 127.0.0.1 (default 8580; 0 = any free port)")
    p.add_argument("--static", action="store_true", help="write the single-file site (static_index.html), do not serve")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser("db", help="the warehouse in use")
    p.add_argument("action", choices=["url", "stop"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("board-report", help="the board report (static HTML) from the reporting schema")
    p.add_argument("--out", help="where to write it (default: POPHEALTH_HOME/reports/board_report.html)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="banner the page as synthetic data (the demo's `pophealth run` remembers it by itself)",
    )
    p.set_defaults(func=cmd_board_report)

    p = sub.add_parser("reidentify", help="direct care: the NHS numbers of named people (audited; reidentifier role)")
    p.add_argument("person_ids", nargs="*", metavar="PERSON_ID")
    p.add_argument("--purpose", help="why: one of the data sharing register's reidentification_purposes")
    p.add_argument("--on-behalf-of", help="the clinician or team the numbers are for")
    p.add_argument("--request", type=int, help="collect this earlier request, once a Caldicott guardian approved it")
    p.set_defaults(func=cmd_reidentify)

    p = sub.add_parser(
        "approve-reidentification", help="Caldicott guardian: approve (or --refuse) a request held beyond the limits"
    )
    p.add_argument("request", type=int, metavar="REQUEST")
    p.add_argument("--note", required=True, help="why, in words an auditor will read")
    p.add_argument("--refuse", action="store_true", help="refuse the request instead")
    p.set_defaults(func=cmd_approve_reidentification)

    p = sub.add_parser("vault-key-pair", help="key custodian: write a new vault key pair (private and public)")
    p.add_argument("--private-key-file", required=True)
    p.add_argument("--public-key-file", required=True)
    p.set_defaults(func=cmd_vault_key_pair)

    p = sub.add_parser("rotate-key", help="key custodian: re-key the warehouse to a new linkage (or purpose) key")
    p.add_argument("--new-key-file", help="the new key (64 hex characters, mode 600)")
    p.add_argument("--vault", action="store_true", help="re-encrypt the vault to a new key pair instead")
    p.add_argument("--new-public-key-file", help="with --vault: the new key pair's public key")
    p.add_argument(
        "--purpose",
        choices=("secondary_use", "direct_care"),
        help="rotate this purpose's key (its published ids all change) instead of the linkage key",
    )
    p.add_argument("--no-rebuild", action="store_true", help="do not rebuild the marts afterwards")
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser("ui", help="the Airflow web UI on 127.0.0.1, on this project's metadata database")
    p.add_argument("--port", type=int, default=8080, help="the port on 127.0.0.1 (default 8080)")
    p.add_argument("--landing", help=f"the landing folder the DAGs read (default: {config.ENV_LANDING_DIR})")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("rerun", help="re-run one past period of a feed from the landing folder, then the marts")
    p.add_argument("--feed", required=True, help="apc, cld, gp_register, optouts, ref_population, ref_postcode_lookup")
    p.add_argument("--period", required=True, help="the period end in the file name, as YYYY-MM-DD")
    p.add_argument("--provider", help="only this provider's file (e.g. RAJ)")
    p.add_argument("--landing", help=f"the landing folder (default: {config.ENV_LANDING_DIR})")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("ig-report", help="the information governance audit (one HTML page) from the live warehouse")
    p.add_argument("--out", help="where to write it (default: POPHEALTH_HOME/reports/ig_report.html)")
    p.set_defaults(func=cmd_ig_report)

    p = sub.add_parser(
        "quasi-identifiers",
        help="how many people each person-level mart singles out on its quasi-identifiers (counts only)",
    )
    p.set_defaults(func=cmd_quasi_identifiers)

    p = sub.add_parser("register", help="check the data sharing register; --write-seed writes its dbt seed")
    p.add_argument("--write-seed", action="store_true", help="write dbt_project/seeds/data_sharing_register.csv")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("fit-risk-model", help="fit the risk model on the warehouse and add it to its seed")
    p.set_defaults(func=cmd_fit_risk_model)
    _group_by_role(parser, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("XDG_RUNTIME_DIR", str(config.paths().home / "run"))
    args = build_parser().parse_args(argv)
    from pophealth.identity.keys import KeyError_
    from pophealth.ingest.landing import FileRejected
    from pophealth.ingest.load import LoadRefused
    from pophealth.quality.rules import RulesError
    from pophealth.warehouse.db import DatabaseError

    try:
        return args.func(args)
    except (DatabaseError, KeyError_, FileRejected, LoadRefused, RulesError) as exc:
        print(f"pophealth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
