# frozen_string_literal: true

# PostgreSQL work during a measurement, per step: the WAL written for the benchmark's
# database and its commits. These are far steadier than throughput on a shared, busy machine.
#
# - WAL records and bytes attributed to the database: pg_walinspect's
#   pg_get_wal_records_info over the LSN range of the measurement, keeping the records whose
#   block references name this database (rel <spc>/<db oid>/<relfilenode>) plus the commit
#   records of the transactions that wrote them. Other databases on the shared server (other
#   engineers' tests) are left out. Full-page images are counted in the bytes.
# - Cluster-wide WAL records and bytes (pg_stat_wal deltas): includes whatever else the
#   server did meanwhile; printed next to the attributed figures as a cross-check.
# - Commits: pg_stat_database.xact_commit delta for the database (the statistics collector
#   flushes with a delay; the snapshot after waits ~0.6 s and forces a fresh snapshot).
#
# The WAL of the range must still be on disk when it is read: the server is shared and busy
# and its checkpoints recycle segments within seconds, so the snapshot before creates a
# temporary physical replication slot (reserving WAL from its LSN on) on a connection held
# until the figures are read; closing that connection drops the slot. Needs a superuser
# (pg_walinspect, the slot) and a free replication slot; a failure raises naming the cause
# rather than printing nothing.
require "pg"
require_relative "common"

module Bench
  module PgWork
    module_function

    # The snapshot before: holds the WAL from here on (see the header) until #per_step.
    def snapshot_before(url)
      holder = PG.connect(url)
      holder.exec("SELECT pg_create_physical_replication_slot($1, true, true)",
                  ["tw_bench_wal_#{Process.pid}_#{holder.backend_pid}"])
      snapshot(url).merge(holder: holder)
    rescue StandardError
      holder&.close
      raise
    end

    def snapshot(url)
      conn = PG.connect(url)
      conn.exec("SET client_min_messages = warning")
      conn.exec("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
      conn.exec("SELECT pg_stat_clear_snapshot()")
      row = conn.exec(<<~SQL).first
        SELECT pg_current_wal_flush_lsn()::text AS lsn,  -- pg_walinspect reads up to the flushed WAL
               (SELECT wal_records FROM pg_stat_wal) AS wal_records,
               (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes,
               (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
               (SELECT oid FROM pg_database WHERE datname = current_database()) AS db_oid
      SQL
      { lsn: row["lsn"], wal_records: row["wal_records"].to_i, wal_bytes: row["wal_bytes"].to_i,
        commits: row["commits"].to_i, db_oid: row["db_oid"].to_i }
    ensure
      conn&.close
    end

    # Waits for the statistics of the work just done to reach the shared counters.
    def snapshot_after(url)
      sleep 0.6
      snapshot(url)
    end

    # { "wal records" => per step, "wal bytes" => per step, "commits" => per step, ... }.
    # Releases the WAL held since #snapshot_before unless `keep: true` (for a #breakdown next).
    def per_step(url, before, after, steps, keep: false)
      records, bytes = attributed(url, before, after)
      release(before) unless keep
      {
        "wal records" => (records.to_f / steps).round(2),
        "wal bytes" => (bytes.to_f / steps).round(1),
        "commits" => ((after[:commits] - before[:commits]).to_f / steps).round(4),
        "cluster wal records" => ((after[:wal_records] - before[:wal_records]).to_f / steps).round(2),
        "cluster wal bytes" => ((after[:wal_bytes] - before[:wal_bytes]).to_f / steps).round(1)
      }
    end

    def attributed(url, before, after)
      conn = PG.connect(url)
      pattern = "%/#{before[:db_oid]}/%"
      row = conn.exec_params(<<~SQL, [before[:lsn], after[:lsn], pattern]).first
        WITH r AS (
          SELECT xid, resource_manager, record_type, record_length, fpi_length, block_ref
            FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
        ), ours AS (
          SELECT DISTINCT xid FROM r WHERE block_ref LIKE $3 AND xid <> '0'::xid
        )
        SELECT count(*) AS records, coalesce(sum(record_length), 0) AS bytes
          FROM r
         WHERE block_ref LIKE $3
            OR (resource_manager = 'Transaction' AND xid IN (SELECT xid FROM ours))
      SQL
      [row["records"].to_i, row["bytes"].to_i]
    rescue PG::Error => e
      raise "WAL attribution with pg_walinspect failed (#{e.message.strip}); " \
            "the measurement's WAL may have been recycled by a checkpoint"
    ensure
      conn&.close
    end

    def release(before)
      before[:holder]&.close
    end

    # Records per step by resource manager and type (the ten largest), for the cost table.
    def breakdown(url, before, after, steps)
      conn = PG.connect(url)
      pattern = "%/#{before[:db_oid]}/%"
      conn.exec_params(<<~SQL, [before[:lsn], after[:lsn], pattern]).map do |r|
        WITH r AS (
          SELECT xid, resource_manager, record_type, record_length, block_ref
            FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
        ), ours AS (
          SELECT DISTINCT xid FROM r WHERE block_ref LIKE $3 AND xid <> '0'::xid
        )
        SELECT resource_manager || '/' || record_type AS kind,
               substring(block_ref from 'rel [0-9]+/[0-9]+/([0-9]+)') AS relfilenode,
               count(*) AS records, sum(record_length) AS bytes
          FROM r
         WHERE block_ref LIKE $3
            OR (resource_manager = 'Transaction' AND xid IN (SELECT xid FROM ours))
         GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 25
      SQL
        relname = r["relfilenode"] && conn.exec_params("SELECT coalesce(pg_filenode_relation(0, $1::oid)::text, $1::text) AS n",
                                                       [r["relfilenode"]]).getvalue(0, 0)
        { kind: r["kind"], relation: relname, per_step: (r["records"].to_f / steps).round(2),
          bytes_per_step: (r["bytes"].to_f / steps).round(1) }
      end
    ensure
      conn&.close
      release(before)
    end
  end
end
