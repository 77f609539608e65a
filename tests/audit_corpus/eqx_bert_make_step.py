"""Equinox BERT: the fine-tuning step of the BERT classifier (returns the updated model).

Source: patrick-kidger/equinox, docs/examples/bert.ipynb (``EmbedderBlock``, ``AttentionBlock``,
``TransformerLayer``, ``Encoder``, ``BertClassifier``, ``compute_loss``, ``make_step``,
``p_make_step``).

Randomness as in the example: ``make_step`` does ``key, new_key = jax.random.split(key)``, uses
``key`` for this step and returns ``new_key`` for the next; ``compute_loss``
(``eqx.filter_value_and_grad``) splits ``key`` into one key per example and ``jax.vmap``s the
classifier over them; inside, every block splits its key again: the embedder's dropout, the
attention's own dropout and the residual dropout, one key per sequence position for the
feed-forward block (``jax.random.split(ff_key, num=seq_len)`` under ``jax.vmap``), and
``cl_key, l_key = jax.random.split(l_key)`` per layer. The step is ``eqx.filter_pmap``-ed with
``axis_name="devices"`` and gradients are ``lax.pmean``-ed. The step returns the model, whose
leaves include non-arrays. Segment embeddings left out; tiny sizes, one device.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

VOCAB, LENGTH, HIDDEN, HEADS, LAYERS, RATE = 11, 4, 8, 2, 2, 0.1


class EmbedderBlock(eqx.Module):
    token_embedder: eqx.nn.Embedding
    position_embedder: eqx.nn.Embedding
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key):
        token_key, position_key = jax.random.split(key)
        self.token_embedder = eqx.nn.Embedding(VOCAB, HIDDEN, key=token_key)
        self.position_embedder = eqx.nn.Embedding(LENGTH, HIDDEN, key=position_key)
        self.layernorm = eqx.nn.LayerNorm(HIDDEN)
        self.dropout = eqx.nn.Dropout(RATE)

    def __call__(self, token_ids, enable_dropout, key):
        x = jax.vmap(self.token_embedder)(token_ids)
        x = x + jax.vmap(self.position_embedder)(jnp.arange(token_ids.shape[0]))
        x = jax.vmap(self.layernorm)(x)
        return self.dropout(x, inference=not enable_dropout, key=key)


class FeedForwardBlock(eqx.Module):
    mlp: eqx.nn.Linear
    output: eqx.nn.Linear
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key):
        mlp_key, output_key = jax.random.split(key)
        self.mlp = eqx.nn.Linear(HIDDEN, 2 * HIDDEN, key=mlp_key)
        self.output = eqx.nn.Linear(2 * HIDDEN, HIDDEN, key=output_key)
        self.layernorm = eqx.nn.LayerNorm(HIDDEN)
        self.dropout = eqx.nn.Dropout(RATE)

    def __call__(self, inputs, enable_dropout, key):
        hidden = jax.nn.gelu(self.mlp(inputs))
        output = self.dropout(self.output(hidden), inference=not enable_dropout, key=key)
        return self.layernorm(output + inputs)


class AttentionBlock(eqx.Module):
    attention: eqx.nn.MultiheadAttention
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key):
        self.attention = eqx.nn.MultiheadAttention(
            HEADS,
            HIDDEN,
            dropout_p=RATE,
            use_query_bias=True,
            use_key_bias=True,
            use_value_bias=True,
            use_output_bias=True,
            key=key,
        )
        self.layernorm = eqx.nn.LayerNorm(HIDDEN)
        self.dropout = eqx.nn.Dropout(RATE)

    def __call__(self, inputs, mask, enable_dropout, key):
        mask = jnp.multiply(mask[:, None], mask[None, :]).astype(bool)
        attention_key, dropout_key = jax.random.split(key)
        out = self.attention(
            inputs, inputs, inputs, mask=mask, inference=not enable_dropout, key=attention_key
        )
        out = self.dropout(out, inference=not enable_dropout, key=dropout_key)
        return jax.vmap(self.layernorm)(out + inputs)


class TransformerLayer(eqx.Module):
    attention_block: AttentionBlock
    ff_block: FeedForwardBlock

    def __init__(self, key):
        attention_key, ff_key = jax.random.split(key)
        self.attention_block = AttentionBlock(attention_key)
        self.ff_block = FeedForwardBlock(ff_key)

    def __call__(self, inputs, mask, enable_dropout, key):
        attn_key, ff_key = jax.random.split(key)
        out = self.attention_block(inputs, mask, enable_dropout, attn_key)
        ff_keys = jax.random.split(ff_key, num=inputs.shape[0])
        return jax.vmap(self.ff_block, in_axes=(0, None, 0))(out, enable_dropout, ff_keys)


class BertClassifier(eqx.Module):
    embedder_block: EmbedderBlock
    layers: list
    pooler: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    classifier_head: eqx.nn.Linear

    def __init__(self, key):
        embedder_key, layer_key, pooler_key, head_key = jax.random.split(key, 4)
        self.embedder_block = EmbedderBlock(embedder_key)
        self.layers = [TransformerLayer(k) for k in jax.random.split(layer_key, LAYERS)]
        self.pooler = eqx.nn.Linear(HIDDEN, HIDDEN, key=pooler_key)
        self.dropout = eqx.nn.Dropout(RATE)
        self.classifier_head = eqx.nn.Linear(HIDDEN, 2, key=head_key)

    def __call__(self, inputs, enable_dropout, key):
        e_key, d_key = jax.random.split(key)
        emb_key, l_key = jax.random.split(e_key)
        x = self.embedder_block(inputs["token_ids"], enable_dropout, emb_key)
        mask = inputs["token_ids"] != 0
        for layer in self.layers:
            cl_key, l_key = jax.random.split(l_key)
            x = layer(x, mask, enable_dropout, cl_key)
        pooled = jnp.tanh(self.pooler(x[0]))
        pooled = self.dropout(pooled, inference=not enable_dropout, key=d_key)
        return self.classifier_head(pooled)


@eqx.filter_value_and_grad
def compute_loss(classifier, inputs, key):
    batch_size = inputs["token_ids"].shape[0]
    batched_keys = jax.random.split(key, num=batch_size)
    logits = jax.vmap(classifier, in_axes=(0, None, 0))(inputs, True, batched_keys)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, inputs["label"]))


def make_step(model, inputs, opt_state, key, tx):
    key, new_key = jax.random.split(key)
    loss, grads = compute_loss(model, inputs, key)
    grads = jax.lax.pmean(grads, axis_name="devices")
    updates, opt_state = tx.update(grads, opt_state, model)
    model = eqx.apply_updates(model, updates)
    return loss, model, opt_state, new_key


TX = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-5))


def setup():
    model_key, train_key = jax.random.split(jax.random.key(5678))
    model = BertClassifier(model_key)
    return model, TX.init(eqx.filter(model, eqx.is_array)), train_key


def audit_target():
    tx = TX
    model, opt_state, train_key = eqx.filter_eval_shape(setup)  # shapes only: the audit traces
    p_make_step = eqx.filter_pmap(functools.partial(make_step, tx=tx), axis_name="devices")
    n = jax.local_device_count()
    replicate = lambda tree: jax.tree.map(  # noqa: E731 - jax.device_put_replicated on shapes
        lambda x: (
            jax.ShapeDtypeStruct((n, *x.shape), x.dtype)
            if isinstance(x, jax.ShapeDtypeStruct)
            else x
        ),
        tree,
    )
    inputs = {
        "token_ids": jax.ShapeDtypeStruct((n, 2, LENGTH), jnp.int32),
        "label": jax.ShapeDtypeStruct((n, 2), jnp.int32),
    }
    train_keys = jax.ShapeDtypeStruct((n, *train_key.shape), train_key.dtype)
    return p_make_step, (replicate(model), inputs, replicate(opt_state), train_keys)
