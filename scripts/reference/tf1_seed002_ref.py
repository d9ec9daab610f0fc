"""Seed 002 (784-32-32-10 ReLU MLP with a Model / Solver split, "Lab: Batchnormalization
Layer"), the seed's own TF1 code run under tf.compat.v1 graph mode (TF 2.21 + tf-keras 2.21,
TF_USE_LEGACY_KERAS=1 for tf.layers).

The seed's cells are transcribed below unchanged, in order (the Model and Solver classes,
both networks trained side by side on the same batches for 10 epochs, per-epoch training
and validation loss/accuracy, the final test evaluation). The only additions, each marked
`# + ref`: seeding, a one-thread session, recording the numbers the seed prints, and
`tf.contrib.layers.flatten`, which TF 2 removed, pointed at `tf.layers.flatten` (the same
op; the seed applies it to an already flat [None, 32] tensor, where it changes nothing).
Usage: TF_USE_LEGACY_KERAS=1 python tf1_seed002_ref.py SEED OUT.jsonl
"""
import json  # + ref
import os  # + ref
import random  # + ref
import sys  # + ref
import time  # + ref
import types  # + ref

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # + ref
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # + ref
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # + ref
import input_data_shim  # + ref: stands in for the removed TF1 MNIST module

input_data_shim.install()  # + ref
SEED, OUT = int(sys.argv[1]), sys.argv[2]  # + ref
EPOCHS = int(os.environ.get("EPOCHS", "10"))  # + ref: the seed's epoch_n = 10
record = {"impl": "tf1", "seed": SEED, "epochs": EPOCHS}  # + ref
t0 = time.time()  # + ref

# ---- 1. Load Library ------------------------------------------------------------------------
import numpy as np  # noqa: E402  # + ref: for seeding next_batch's shuffling
import tensorflow.compat.v1 as tf  # noqa: E402  (the seed's `tf`, TF1 API)
from tensorflow.examples.tutorials.mnist import input_data  # noqa: E402  (the shim)

tf.disable_eager_execution()  # + ref: TF1 graph mode
tf.contrib = types.SimpleNamespace(layers=types.SimpleNamespace(flatten=tf.layers.flatten))  # + ref
np.random.seed(SEED)  # + ref: next_batch shuffles with numpy's global RNG
# + ref: tf-keras draws the seeds of tf.layers' initializers from Python's `random`, not
# from the graph seed: seed it too, or a seed number does not repeat its run (added after
# the shipped seed-002 runs were measured; they are independent draws either way).
random.seed(SEED)  # + ref

mnist = input_data.read_data_sets("MNIST_data/", one_hot=True)


# ---- 2. Define Model & Solver Class ---------------------------------------------------------
class Model:
    """Network Model Class

    Note that this class has only the constructor.
    The actual model is defined inside the constructor.
    (The seed's docstring, abridged.)
    """
    def __init__(self, name, input_dim, output_dim, hidden_dims=[32, 32], use_batchnorm=True, activation_fn=tf.nn.relu, optimizer=tf.train.AdamOptimizer, lr=0.01):
        """ Constructor (the seed's docstring, abridged) """
        with tf.variable_scope(name):
            # Placeholders are defined
            self.X = tf.placeholder(tf.float32, [None, input_dim], name='X')
            self.y = tf.placeholder(tf.float32, [None, output_dim], name='y')
            self.mode = tf.placeholder(tf.bool, name='train_mode')

            # Loop over hidden layers
            net = self.X
            for i, h_dim in enumerate(hidden_dims):
                with tf.variable_scope(f'layer{i}'):
                    net = tf.layers.dense(net, h_dim)

                    if use_batchnorm:
                        net = tf.layers.batch_normalization(net, training=self.mode)

                    net = activation_fn(net)

            # Attach fully connected layers
            net = tf.contrib.layers.flatten(net)
            net = tf.layers.dense(net, output_dim)

            self.loss = tf.nn.softmax_cross_entropy_with_logits(logits=net, labels=self.y)
            self.loss = tf.reduce_mean(self.loss, name='loss')

            # When using the batchnormalization layers,
            # it is necessary to manually add the update operations
            # because the moving averages are not included in the graph
            update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS, scope=name)
            with tf.control_dependencies(update_ops):
                self.train_op = optimizer(lr).minimize(self.loss)

            # Accuracy etc
            softmax = tf.nn.softmax(net, name='softmax')
            self.accuracy = tf.equal(tf.argmax(softmax, 1), tf.argmax(self.y, 1))
            self.accuracy = tf.reduce_mean(tf.cast(self.accuracy, tf.float32))


class Solver:
    """Solver class (the seed's docstring, abridged)"""
    def __init__(self, sess, model):
        self.model = model
        self.sess = sess

    def train(self, X, y):
        feed = {
            self.model.X: X,
            self.model.y: y,
            self.model.mode: True
        }
        train_op = self.model.train_op
        loss = self.model.loss

        return self.sess.run([train_op, loss], feed_dict=feed)

    def evaluate(self, X, y, batch_size=None):
        if batch_size:
            N = X.shape[0]

            total_loss = 0
            total_acc = 0

            for i in range(0, N, batch_size):
                X_batch = X[i:i + batch_size]
                y_batch = y[i:i + batch_size]

                feed = {
                    self.model.X: X_batch,
                    self.model.y: y_batch,
                    self.model.mode: False
                }

                loss = self.model.loss
                accuracy = self.model.accuracy

                step_loss, step_acc = self.sess.run([loss, accuracy], feed_dict=feed)

                total_loss += step_loss * X_batch.shape[0]
                total_acc += step_acc * X_batch.shape[0]

            total_loss /= N
            total_acc /= N

            return total_loss, total_acc


        else:
            feed = {
                self.model.X: X,
                self.model.y: y,
                self.model.mode: False
            }

            loss = self.model.loss
            accuracy = self.model.accuracy

            return self.sess.run([loss, accuracy], feed_dict=feed)


# ---- 3. Instantiate Model/Solver classes ----------------------------------------------------
input_dim = 784
output_dim = 10
N = 55000

tf.reset_default_graph()
tf.set_random_seed(SEED)  # + ref: glorot-uniform kernels of tf.layers.dense
sess = tf.InteractiveSession(config=tf.ConfigProto(  # + ref: config (thread count)
    intra_op_parallelism_threads=int(os.environ.get("TF_THREADS", "1")),
    inter_op_parallelism_threads=1))

# We create two models: one with the batch norm and other without
bn = Model('batchnorm', input_dim, output_dim, use_batchnorm=True)
nn = Model('no_norm', input_dim, output_dim, use_batchnorm=False)

# We create two solvers: to train both models at the same time for comparison
# Usually we only need one solver class
bn_solver = Solver(sess, bn)
nn_solver = Solver(sess, nn)
epoch_n = EPOCHS  # the seed: 10
batch_size = 32

# Save Losses and Accuracies every epoch
# We are going to plot them later
train_losses = []
train_accs = []

valid_losses = []
valid_accs = []

# ---- 4. Run the train step ------------------------------------------------------------------
init = tf.global_variables_initializer()
sess.run(init)

for epoch in range(epoch_n):
    for _ in range(N//batch_size):
        X_batch, y_batch = mnist.train.next_batch(batch_size)

        _, bn_loss = bn_solver.train(X_batch, y_batch)
        _, nn_loss = nn_solver.train(X_batch, y_batch)

    b_loss, b_acc = bn_solver.evaluate(mnist.train.images, mnist.train.labels, batch_size)
    n_loss, n_acc = nn_solver.evaluate(mnist.train.images, mnist.train.labels, batch_size)

    # Save train losses/acc
    train_losses.append([b_loss, n_loss])
    train_accs.append([b_acc, n_acc])
    print(f'[Epoch {epoch}-TRAIN] Batchnorm Loss(Acc): {b_loss:.5f}({b_acc:.2%}) vs No Batchnorm Loss(Acc): {n_loss:.5f}({n_acc:.2%})')

    b_loss, b_acc = bn_solver.evaluate(mnist.validation.images, mnist.validation.labels)
    n_loss, n_acc = nn_solver.evaluate(mnist.validation.images, mnist.validation.labels)

    # Save valid losses/acc
    valid_losses.append([b_loss, n_loss])
    valid_accs.append([b_acc, n_acc])
    print(f'[Epoch {epoch}-VALID] Batchnorm Loss(Acc): {b_loss:.5f}({b_acc:.2%}) vs No Batchnorm Loss(Acc): {n_loss:.5f}({n_acc:.2%})')
    print()

# ---- 5. Performance Comparison ---------------------------------------------------------------
bn_test = bn_solver.evaluate(mnist.test.images, mnist.test.labels)
nn_test = nn_solver.evaluate(mnist.test.images, mnist.test.labels)
print(bn_test, nn_test)

# + ref: everything the seed prints and plots, as [with BN, without BN] pairs per epoch
record["train_losses"] = [[float(b), float(n)] for b, n in train_losses]  # + ref
record["train_accs"] = [[float(b), float(n)] for b, n in train_accs]  # + ref
record["valid_losses"] = [[float(b), float(n)] for b, n in valid_losses]  # + ref
record["valid_accs"] = [[float(b), float(n)] for b, n in valid_accs]  # + ref
record["bn_test_loss"], record["bn_test_accuracy"] = map(float, bn_test)  # + ref
record["nn_test_loss"], record["nn_test_accuracy"] = map(float, nn_test)  # + ref
record["wall_s"] = time.time() - t0  # + ref
with open(OUT, "a") as f:  # + ref
    f.write(json.dumps(record) + "\n")  # + ref
