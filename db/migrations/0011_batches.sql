-- 0011: Batch API backlog mode (issue 18).
-- * parecer._batches: one row per batch of a backlog run sent through the provider's
--   Batch API, recorded before anything is uploaded (crash recovery starts here);
-- * parecer._batch_items: the items a batch holds, with the lease (token, attempt
--   number) each was claimed under, so any process can finish them;
-- * _model_prices.batch_price_factor: the Batch API price as a fraction of the
--   standard price (OpenAI: 0.5 for every model);
-- * set_model_price and _candidates gain an argument: their 0010 signatures go
--   here, db/api/ defines the new ones.
CREATE TABLE parecer._batches (
    batch_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            bigint NOT NULL REFERENCES parecer.runs ON DELETE CASCADE,
    client_id         text NOT NULL,
    client_slug       text NOT NULL,
    status            text NOT NULL DEFAULT 'preparing'
                      CHECK (status IN ('preparing', 'uploaded', 'submitted', 'ingesting',
                                        'completed', 'failed', 'expired', 'cancelled')),
    provider_status   text,
    provider_batch_id text UNIQUE,
    input_file_id     text,
    output_file_id    text,
    error_file_id     text,
    request_total     integer,
    request_completed integer,
    request_failed    integer,
    worker            text NOT NULL,
    created_by        name NOT NULL,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX _batches_open_idx ON parecer._batches (batch_id)
    WHERE status IN ('preparing', 'uploaded', 'submitted', 'ingesting');
CREATE INDEX _batches_run_idx ON parecer._batches (run_id);

CREATE TABLE parecer._batch_items (
    batch_id    bigint NOT NULL REFERENCES parecer._batches ON DELETE CASCADE,
    analysis_id uuid NOT NULL REFERENCES parecer.analyses ON DELETE CASCADE,
    attempt     integer NOT NULL,   -- analyses.claims when the batch claimed it
    lease_token uuid NOT NULL UNIQUE,
    PRIMARY KEY (batch_id, analysis_id)
);
CREATE INDEX _batch_items_analysis_idx ON parecer._batch_items (analysis_id);

ALTER TABLE parecer._model_prices
    ADD COLUMN batch_price_factor numeric NOT NULL DEFAULT 0.5
        CHECK (batch_price_factor >= 0 AND batch_price_factor <= 1);
COMMENT ON COLUMN parecer._model_prices.batch_price_factor IS
'The Batch API price as a fraction of this row''s standard prices (OpenAI: 0.5, half price, for every model).';

DROP FUNCTION IF EXISTS parecer.set_model_price(text, numeric, numeric, numeric, text, date);
DROP FUNCTION IF EXISTS parecer._candidates(text, integer);
