-- 0017: mark_done checks a report's custom fields (_extra_problem) in its check
-- query, with the rest of the report, instead of a trigger on analyses that ran a
-- PL/pgSQL call and a query per stored row and, raising inside the batch UPDATE,
-- sent a whole mark_done_many batch down its one-item-at-a-time path. The
-- trigger and its function go.
DROP TRIGGER IF EXISTS analyses_extra_fields ON parecer.analyses;
DROP FUNCTION IF EXISTS parecer._check_extra_fields();
