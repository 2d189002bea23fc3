-- Rollback of 0011. The functions of this release that use these objects stay
-- until the API of the release you roll back to is applied.
DROP FUNCTION IF EXISTS parecer.set_model_price(text, numeric, numeric, numeric, text, date, numeric) CASCADE;
DROP FUNCTION IF EXISTS parecer._candidates(text, integer, bigint) CASCADE;
DROP TABLE IF EXISTS parecer._batch_items CASCADE;
DROP TABLE IF EXISTS parecer._batches CASCADE;
DROP VIEW IF EXISTS parecer.model_prices CASCADE;
ALTER TABLE parecer._model_prices DROP COLUMN IF EXISTS batch_price_factor CASCADE;
